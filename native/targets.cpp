#include "targets.h"

#include <csignal>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csetjmp>
#include <cstring>
#include <mutex>

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

namespace {

// SIGBUS during a copy through a memory target's mapping means the page
// is past the file's end: the copy is abandoned and the request served by
// pread/pwrite, which meets the end of the file (-EIO for a read) instead
// of ending the server. Only the server's user can shrink the file (its
// directory is that user's, mode 0700, checked before the file is
// opened), and ublk-ts itself shrinks it only after the kernel's capacity
// shrank with the device unused (resize.ts); so this is root truncating
// the file by hand, survived rather than prevented. The handler
// is process-wide by nature, so it is installed once and passes any
// SIGBUS that is not a guarded copy's on to what was there before.
thread_local sigjmp_buf *volatile tlsCopyGuard = nullptr;
struct sigaction previousBusAction {};

void OnBus(int sig, siginfo_t *info, void *context) {
  sigjmp_buf *guard = tlsCopyGuard;
  if (guard != nullptr) siglongjmp(*guard, 1);
  if (previousBusAction.sa_flags & SA_SIGINFO) {
    previousBusAction.sa_sigaction(sig, info, context);
  } else if (previousBusAction.sa_handler != SIG_DFL && previousBusAction.sa_handler != SIG_IGN) {
    previousBusAction.sa_handler(sig);
  } else {
    // Back to the default: the faulting access runs again and ends the process as it would have.
    sigaction(SIGBUS, &previousBusAction, nullptr);
  }
}

void InstallBusGuard() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = OnBus;
    // NODEFER: the handler leaves by siglongjmp, which restores no signal mask.
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &previousBusAction);
  });
}

// memcpy that returns false instead of dying where a page of `src` or `dst` is past its file's end.
bool GuardedCopy(uint8_t *dst, const uint8_t *src, size_t bytes) {
  sigjmp_buf env;
  if (sigsetjmp(env, 0) != 0) {
    tlsCopyGuard = nullptr;
    return false;
  }
  tlsCopyGuard = &env;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memcpy(dst, src, bytes);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  tlsCopyGuard = nullptr;
  return true;
}

} // namespace

MemoryPages::MemoryPages(uint64_t sizeBytes, uint64_t pageSize) {
  const uint64_t pages = (sizeBytes + pageSize - 1) / pageSize;
  const size_t bytes = static_cast<size_t>((pages + 63) / 64 * 8);
  void *words = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (words == MAP_FAILED) return; // no page map: every request asks mincore
  words_ = static_cast<uint64_t *>(words);
  pages_ = pages;
  bytes_ = bytes;
}

MemoryPages::~MemoryPages() {
  if (words_ != nullptr) munmap(words_, bytes_);
}

bool MemoryPages::AllKnown(uint64_t first, uint64_t count) const {
  if (first + count > pages_) return false;
  for (uint64_t page = first; page < first + count; page++) {
    if ((__atomic_load_n(&words_[page / 64], __ATOMIC_RELAXED) & (1ull << (page % 64))) == 0) return false;
  }
  return true;
}

void MemoryPages::Mark(uint64_t first, uint64_t count) {
  for (uint64_t page = first; page < first + count && page < pages_; page++) {
    const uint64_t bit = 1ull << (page % 64);
    // Most requests land on pages already marked: read before writing the shared word.
    if ((__atomic_load_n(&words_[page / 64], __ATOMIC_RELAXED) & bit) == 0) {
      __atomic_fetch_or(&words_[page / 64], bit, __ATOMIC_RELAXED);
    }
  }
}

void MemoryPages::Forget(uint64_t first, uint64_t count) {
  for (uint64_t page = first; page < first + count && page < pages_; page++) {
    __atomic_fetch_and(&words_[page / 64], ~(1ull << (page % 64)), __ATOMIC_RELAXED);
  }
}

MemoryStore::MemoryStore(int fd, uint64_t sizeBytes, uint32_t maxIoBytes, std::shared_ptr<MemoryPages> pages)
    : fd_(fd), size_(sizeBytes), pageSize_(static_cast<uint64_t>(sysconf(_SC_PAGESIZE))), pages_(std::move(pages)) {
  // A request spans at most this many pages (one more where it starts inside a page).
  residency_.resize(maxIoBytes / pageSize_ + 2);
  InstallBusGuard();
  Map();
}

MemoryStore::~MemoryStore() {
  if (map_ != nullptr) munmap(map_, mapped_);
}

void MemoryStore::Map() {
  // A shrunk file keeps the longer mapping: pages past its end are not in
  // the file, so InFile keeps requests off them.
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
  if (map_ == nullptr || offset + bytes > mapped_ || bytes == 0) return false;
  const uint64_t first = offset / pageSize_;
  const uint64_t count = (offset + bytes + pageSize_ - 1) / pageSize_ - first;
  if (pages_ && pages_->AllKnown(first, count)) return true;
  const uint64_t start = first * pageSize_;
  if (count > residency_.size() || mincore(map_ + start, offset + bytes - start, residency_.data()) < 0) return false;
  for (uint64_t i = 0; i < count; i++) {
    if ((residency_[i] & 1) == 0) return false;
  }
  if (pages_) pages_->Mark(first, count);
  return true;
}

bool MemoryStore::CopyMapped(bool write, uint64_t offset, uint32_t bytes, uint8_t *buffer) {
  if (!InFile(offset, bytes)) return false;
  if (write ? GuardedCopy(map_ + offset, buffer, bytes) : GuardedCopy(buffer, map_ + offset, bytes)) return true;
  const uint64_t first = offset / pageSize_;
  if (pages_) pages_->Forget(first, (offset + bytes + pageSize_ - 1) / pageSize_ - first);
  return false;
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
  const uint64_t first = offset / pageSize_;
  const uint64_t count = (offset + bytes + pageSize_ - 1) / pageSize_ - first;
  switch (IoOp(iod)) {
  case ublk::IO_OP_READ:
    if (CopyMapped(false, offset, bytes, buffer)) return static_cast<int>(bytes);
    return FullTransfer(false, fd_, buffer, bytes, offset);
  case ublk::IO_OP_WRITE: {
    if (CopyMapped(true, offset, bytes, buffer)) return static_cast<int>(bytes);
    // A write into a hole allocates its pages either way; pwrite does it
    // without a page fault, and later requests find them in the file.
    const int result = FullTransfer(true, fd_, buffer, bytes, offset);
    if (result > 0 && pages_) pages_->Mark(first, count);
    return result;
  }
  case ublk::IO_OP_FLUSH:
    return 0;
  case ublk::IO_OP_DISCARD:
  case ublk::IO_OP_WRITE_ZEROES:
    // Forgotten first, so no queue copies into a page being punched; the
    // punch unmaps the pages from every queue's mapping.
    if (pages_) pages_->Forget(first, count);
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
