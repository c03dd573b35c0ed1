#include "targets.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ublkts {

int NullTargetResult(const ublk::io_desc &iod) {
  switch (IoOp(iod)) {
  case ublk::IO_OP_READ:
  case ublk::IO_OP_WRITE:
    return static_cast<int>(IoBytes(iod));
  case ublk::IO_OP_FLUSH:
  case ublk::IO_OP_DISCARD:
  case ublk::IO_OP_WRITE_ZEROES:
    return 0;
  default:
    return -EOPNOTSUPP;
  }
}

namespace {

// pread/pwrite until done: a tmpfs file only returns short at its end.
int FullTransfer(bool write, int fd, uint8_t *buffer, uint32_t bytes, uint64_t offset) {
  uint32_t done = 0;
  while (done < bytes) {
    ssize_t n = write ? pwrite(fd, buffer + done, bytes - done, static_cast<off_t>(offset + done))
                      : pread(fd, buffer + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    // The file is sized to the device: an end of file inside it means
    // someone shrank it, and a read there has no data to give.
    if (n == 0) return -EIO;
    done += static_cast<uint32_t>(n);
  }
  return static_cast<int>(bytes);
}

} // namespace

int MemoryTargetIo(int fd, uint64_t *sizeBytes, const ublk::io_desc &iod, uint8_t *buffer) {
  const uint64_t offset = IoOffset(iod);
  const uint32_t bytes = IoBytes(iod);
  if (offset + bytes > *sizeBytes) {
    struct stat st {};
    if (fstat(fd, &st) < 0) return -errno;
    *sizeBytes = static_cast<uint64_t>(st.st_size);
    if (offset + bytes > *sizeBytes) return -EIO;
  }
  switch (IoOp(iod)) {
  case ublk::IO_OP_READ:
    return FullTransfer(false, fd, buffer, bytes, offset);
  case ublk::IO_OP_WRITE:
    return FullTransfer(true, fd, buffer, bytes, offset);
  case ublk::IO_OP_FLUSH:
    return 0;
  case ublk::IO_OP_DISCARD:
  case ublk::IO_OP_WRITE_ZEROES:
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(bytes)) < 0) {
      return -errno;
    }
    return 0;
  default:
    return -EOPNOTSUPP;
  }
}

bool LoopTargetSupports(const ublk::io_desc &iod) {
  switch (IoOp(iod)) {
  case ublk::IO_OP_READ:
  case ublk::IO_OP_WRITE:
  case ublk::IO_OP_FLUSH:
  case ublk::IO_OP_DISCARD:
  case ublk::IO_OP_WRITE_ZEROES:
    return true;
  default:
    return false;
  }
}

int BlockDeviceDiscard(int fd, const ublk::io_desc &iod) {
  uint64_t range[2] = {IoOffset(iod), IoBytes(iod)};
  return ioctl(fd, BLKDISCARD, range) == 0 ? 0 : -errno;
}

void LoopTargetPrep(io_uring_sqe *sqe, int fd, const ublk::io_desc &iod, uint8_t *buffer, ZeroStage stage) {
  const uint64_t offset = IoOffset(iod);
  const uint32_t bytes = IoBytes(iod);
  switch (IoOp(iod)) {
  case ublk::IO_OP_READ:
    io_uring_prep_read(sqe, fd, buffer, bytes, offset);
    return;
  case ublk::IO_OP_WRITE:
    io_uring_prep_write(sqe, fd, buffer, bytes, offset);
    if (IoFlags(iod) & ublk::IO_F_FUA) sqe->rw_flags = RWF_DSYNC;
    return;
  case ublk::IO_OP_FLUSH:
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
    return;
  case ublk::IO_OP_DISCARD:
    io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
    return;
  case ublk::IO_OP_WRITE_ZEROES: {
    int mode = stage == ZeroStage::ZeroRange   ? FALLOC_FL_ZERO_RANGE
               : stage == ZeroStage::PunchHole ? FALLOC_FL_PUNCH_HOLE
                                               : 0;
    io_uring_prep_fallocate(sqe, fd, mode | FALLOC_FL_KEEP_SIZE, offset, bytes);
    return;
  }
  default:
    io_uring_prep_nop(sqe);
  }
}

bool LoopTargetComplete(const ublk::io_desc &iod, int res, ZeroStage stage, ZeroStage *next, int *result) {
  const unsigned op = IoOp(iod);
  if (op == ublk::IO_OP_WRITE_ZEROES) {
    if (stage == ZeroStage::ZeroRange && (res == -EOPNOTSUPP || res == -EINVAL)) {
      *next = ZeroStage::PunchHole;
      return true;
    }
    // NOUNMAP asks for allocated zeroes: a hole alone would give space back.
    if (stage == ZeroStage::PunchHole && res == 0 && (IoFlags(iod) & ublk::IO_F_NOUNMAP)) {
      *next = ZeroStage::Allocate;
      return true;
    }
  }
  // A short transfer goes back as it is: the kernel completes that many
  // bytes and sends the rest again, so an error after partial progress
  // (io_uring's short count) is met on the retry. Nothing at all
  // transferred means the file ends there (it shrank): an error, since
  // the kernel would resend a zero count forever.
  if ((op == ublk::IO_OP_READ || op == ublk::IO_OP_WRITE) && res == 0 && IoBytes(iod) > 0) {
    *result = -EIO;
    return false;
  }
  *result = res;
  return false;
}

void FixedBufferPrep(io_uring_sqe *sqe, int fd, const ublk::io_desc &iod, uint16_t bufIndex, uint32_t done) {
  const uint64_t offset = IoOffset(iod) + done;
  const uint32_t bytes = IoBytes(iod) - done;
  void *at = reinterpret_cast<void *>(static_cast<uintptr_t>(done));
  if (IoOp(iod) == ublk::IO_OP_READ) {
    io_uring_prep_read_fixed(sqe, fd, at, bytes, offset, bufIndex);
    return;
  }
  io_uring_prep_write_fixed(sqe, fd, at, bytes, offset, bufIndex);
  if (IoFlags(iod) & ublk::IO_F_FUA) sqe->rw_flags = RWF_DSYNC;
}

int MemoryTargetBounds(int fd, uint64_t *sizeBytes, const ublk::io_desc &iod) {
  const uint64_t end = IoOffset(iod) + IoBytes(iod);
  if (end <= *sizeBytes) return 0;
  struct stat st {};
  if (fstat(fd, &st) < 0) return -errno;
  *sizeBytes = static_cast<uint64_t>(st.st_size);
  return end <= *sizeBytes ? 0 : -EIO;
}

} // namespace ublkts
