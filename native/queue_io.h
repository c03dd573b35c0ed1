// What a ublk queue server does with the kernel, whether its requests are
// served by a native thread (queue.cpp) or from JavaScript (js_queue.cpp).
#pragma once

#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

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
