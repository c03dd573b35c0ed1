// What a ublk queue server does with the kernel, whether its requests are
// served by a native thread (queue.cpp) or from JavaScript (js_queue.cpp).
#pragma once

#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>

#include <time.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "targets.h"
#include "ublk_uapi.h"

namespace ublkts {

inline size_t RoundUp(size_t value, size_t unit) { return (value + unit - 1) / unit * unit; }

// Fills `sqe` with FETCH_REQ or COMMIT_AND_FETCH_REQ for one tag. `result`
// answers the tag's previous request (ignored by FETCH_REQ); `buffer` is the
// tag's IO buffer, which the kernel fills before handing over a write and
// reads back when a read is committed. The tag is the user data, so its
// completion finds the tag again.
inline void PrepIoCmd(io_uring_sqe *sqe, int charFd, unsigned opcode, uint16_t qid, unsigned tag, int result,
                      const uint8_t *buffer) {
  std::memset(static_cast<void *>(sqe), 0, sizeof(*sqe));
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = charFd;
  sqe->cmd_op = opcode;
  sqe->user_data = tag;
  auto *cmd = reinterpret_cast<ublk::io_cmd *>(sqe->cmd);
  cmd->q_id = qid;
  cmd->tag = static_cast<uint16_t>(tag);
  cmd->result = result;
  cmd->addr = reinterpret_cast<uint64_t>(buffer);
}

// How long a stopping queue waits for its target IO before giving up on
// unmapping the buffers.
constexpr int kTargetDrainMs = 30000;
// The user data of the cancel request AwaitTargetIo submits.
constexpr uint64_t kCancelToken = 1ull << 61;

// Waits until the kernel has finished every target operation in flight on
// `ring` (*inflight of them; their CQEs carry kTargetIoBit), having asked it
// to cancel what it can. Closing the ring is not enough: a buffered read
// running in io-wq goes on writing into its buffer after the ring is gone,
// into memory that may be mapped again for something else by then. Other
// CQEs are dropped (the queue is ending). False when some are still running
// after timeoutMs (or the ring fails): the buffers must then stay mapped.
inline bool AwaitTargetIo(io_uring *ring, uint32_t *inflight, int timeoutMs) {
  if (*inflight == 0) return true;
  io_uring_sqe *sqe = io_uring_get_sqe(ring);
  if (sqe == nullptr) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  if (sqe != nullptr) {
    // Matches queued and pollable operations (and signals running io-wq
    // ones); the ublk commands are not cancelable this way.
    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
    sqe->user_data = kCancelToken;
  }
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const int64_t deadline = now.tv_sec * 1000 + now.tv_nsec / 1000000 + timeoutMs;
  while (*inflight > 0) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    const int64_t left = deadline - (now.tv_sec * 1000 + now.tv_nsec / 1000000);
    if (left <= 0) return false;
    __kernel_timespec wait{left / 1000, (left % 1000) * 1000000};
    io_uring_cqe *first = nullptr;
    int ret = io_uring_submit_and_wait_timeout(ring, &first, 1, &wait, nullptr);
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) return false;
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe *cqe;
    io_uring_for_each_cqe(ring, head, cqe) {
      seen++;
      if ((cqe->user_data & kTargetIoBit) && cqe->user_data != kCancelToken && *inflight > 0) --*inflight;
    }
    io_uring_cq_advance(ring, seen);
  }
  return true;
}

// The queue's two mappings: its slice of the kernel's descriptor array
// (read-only; the driver writes each request's descriptor there) and the IO
// buffers, maxIoSize bytes per tag. Both are mapped or neither: a failed
// construction holds nothing and keeps the errno of the mmap that failed.
// Moving keeps the addresses, so views over them (JS ArrayBuffers) stay valid.
class QueueMappings {
public:
  QueueMappings() = default;

  QueueMappings(int charFd, uint16_t qid, uint16_t depth, uint32_t maxIoSize) : maxIoSize_(maxIoSize) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    // Every queue's slice starts at a stride sized for the deepest queue.
    const off_t descOffset = ublk::CMD_BUF_OFFSET + qid * RoundUp(ublk::MAX_QUEUE_DEPTH * sizeof(ublk::io_desc), page);
    const size_t descBytes = RoundUp(depth * sizeof(ublk::io_desc), page);
    void *descs = mmap(nullptr, descBytes, PROT_READ, MAP_SHARED | MAP_POPULATE, charFd, descOffset);
    if (descs == MAP_FAILED) {
      Fail("mmap io descriptors", errno);
      return;
    }
    const size_t bufferBytes = static_cast<size_t>(depth) * maxIoSize;
    void *buffers =
        mmap(nullptr, bufferBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (buffers == MAP_FAILED) {
      const int err = errno;
      munmap(descs, descBytes);
      Fail("mmap io buffers", err);
      return;
    }
    descs_ = static_cast<const ublk::io_desc *>(descs);
    descBytes_ = descBytes;
    buffers_ = static_cast<uint8_t *>(buffers);
    bufferBytes_ = bufferBytes;
  }

  QueueMappings(const QueueMappings &) = delete;
  QueueMappings &operator=(const QueueMappings &) = delete;
  QueueMappings(QueueMappings &&other) noexcept { *this = std::move(other); }
  QueueMappings &operator=(QueueMappings &&other) noexcept {
    if (this != &other) {
      Reset();
      descs_ = std::exchange(other.descs_, nullptr);
      descBytes_ = std::exchange(other.descBytes_, 0);
      buffers_ = std::exchange(other.buffers_, nullptr);
      bufferBytes_ = std::exchange(other.bufferBytes_, 0);
      maxIoSize_ = other.maxIoSize_;
      errno_ = other.errno_;
      failedOp_ = other.failedOp_;
    }
    return *this;
  }
  ~QueueMappings() { Reset(); }

  // Unmaps both. The ring's commands point into the buffers, so the ring
  // must be gone (or never have had commands) first.
  void Reset() {
    if (buffers_ != nullptr) munmap(buffers_, bufferBytes_);
    if (descs_ != nullptr) munmap(const_cast<ublk::io_desc *>(descs_), descBytes_);
    descs_ = nullptr;
    descBytes_ = 0;
    buffers_ = nullptr;
    bufferBytes_ = 0;
  }

  // Keeps the IO buffers in memory (populating them): errno, or 0.
  int LockBuffers() { return mlock(buffers_, bufferBytes_) == 0 ? 0 : errno; }
  // Keeps one tag's IO buffer in memory: errno, or 0.
  int LockBuffer(unsigned tag) { return mlock(Buffer(tag), maxIoSize_) == 0 ? 0 : errno; }

  // Forgets both without unmapping: for when the kernel may still write
  // into the buffers (AwaitTargetIo gave up); leaking beats corrupting.
  void Abandon() {
    descs_ = nullptr;
    descBytes_ = 0;
    buffers_ = nullptr;
    bufferBytes_ = 0;
  }

  int Errno() const { return errno_; }
  const char *FailedOp() const { return failedOp_; }

  const ublk::io_desc &Descriptor(unsigned tag) const { return descs_[tag]; }
  uint8_t *Buffer(unsigned tag) const { return buffers_ + static_cast<size_t>(tag) * maxIoSize_; }

  const void *Descriptors() const { return descs_; }
  size_t DescriptorBytes() const { return descBytes_; }
  uint8_t *Buffers() const { return buffers_; }
  size_t BufferBytes() const { return bufferBytes_; }

private:
  void Fail(const char *op, int err) {
    failedOp_ = op;
    errno_ = err;
  }

  const ublk::io_desc *descs_ = nullptr;
  size_t descBytes_ = 0;
  uint8_t *buffers_ = nullptr;
  size_t bufferBytes_ = 0;
  uint32_t maxIoSize_ = 0;
  int errno_ = 0;
  const char *failedOp_ = "";
};

} // namespace ublkts
