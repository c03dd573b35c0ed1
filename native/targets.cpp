#include "targets.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
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

MemoryStore::MemoryStore(int fd, uint64_t sizeBytes, uint32_t maxIoBytes)
    : fd_(fd), size_(sizeBytes), pageSize_(static_cast<uint64_t>(sysconf(_SC_PAGESIZE))) {
  // A request spans at most this many pages (one more where it starts inside a page).
  residency_.resize(maxIoBytes / pageSize_ + 2);
  Map();
}

MemoryStore::~MemoryStore() {
  if (map_ != nullptr) munmap(map_, mapped_);
}

void MemoryStore::Map() {
  // A shrunk file keeps the longer mapping: InFile never lets a request
  // touch a page the file no longer holds.
  if (size_ <= mapped_) return;
  // A read-only descriptor (or no address space for a huge device) gives
  // no mapping, and every request takes pread/pwrite: slower, still right.
  // So any mapping here was opened for writing, which is also what lets
  // mincore report the file's pages rather than claim all are there.
  void *map = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (map == MAP_FAILED) return;
  if (map_ != nullptr) munmap(map_, mapped_);
  map_ = static_cast<uint8_t *>(map);
  mapped_ = size_;
}

bool MemoryStore::InFile(uint64_t offset, uint32_t bytes) {
  if (map_ == nullptr || offset + bytes > mapped_) return false;
  const uint64_t first = offset & ~(pageSize_ - 1);
  const uint64_t length = offset + bytes - first;
  const uint64_t pages = (length + pageSize_ - 1) / pageSize_;
  if (pages > residency_.size() || mincore(map_ + first, length, residency_.data()) < 0) return false;
  for (uint64_t i = 0; i < pages; i++) {
    if ((residency_[i] & 1) == 0) return false;
  }
  return true;
}

int MemoryStore::Io(const ublk::io_desc &iod, uint8_t *buffer) {
  const uint64_t offset = IoOffset(iod);
  const uint32_t bytes = IoBytes(iod);
  if (offset + bytes > size_) {
    struct stat st {};
    if (fstat(fd_, &st) < 0) return -errno;
    size_ = static_cast<uint64_t>(st.st_size);
    if (offset + bytes > size_) return -EIO;
    Map();
  }
  // Why the mapping is only touched where mincore found the file's pages:
  // a page past the file's end would raise SIGBUS and end the server. Only
  // this server's user can shrink the file (its directory is that user's,
  // mode 0700, checked before the file is opened), and ublk-ts shrinks it
  // only after the kernel's capacity shrank and with the device unused
  // (resize.ts), so no request is then in flight past the new end. A page
  // truncated before mincore looks is not in the file: that request takes
  // pread/pwrite, and a read there gets -EIO as before. What is left is a
  // truncate by root by hand landing between mincore and the memcpy.
  switch (IoOp(iod)) {
  case ublk::IO_OP_READ:
    if (InFile(offset, bytes)) {
      std::memcpy(buffer, map_ + offset, bytes);
      return static_cast<int>(bytes);
    }
    return FullTransfer(false, fd_, buffer, bytes, offset);
  case ublk::IO_OP_WRITE:
    // A write into a hole allocates its page either way; pwrite does it
    // without a page fault, and the next request finds the page in the file.
    if (InFile(offset, bytes)) {
      std::memcpy(map_ + offset, buffer, bytes);
      return static_cast<int>(bytes);
    }
    return FullTransfer(true, fd_, buffer, bytes, offset);
  case ublk::IO_OP_FLUSH:
    return 0;
  case ublk::IO_OP_DISCARD:
  case ublk::IO_OP_WRITE_ZEROES:
    // The punched pages leave the mapping too: later reads find a hole.
    if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
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

} // namespace ublkts
