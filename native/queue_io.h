// What a ublk queue server does with the kernel, whether its requests are
// served by a native thread (queue.cpp) or from JavaScript (js_queue.cpp).
#pragma once

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

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

} // namespace ublkts
