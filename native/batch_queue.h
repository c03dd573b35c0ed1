// A queue served with batched IO commands (UBLK_F_BATCH_IO, Linux 7.0+):
// one PREP_IO_CMDS makes every tag ready, one multishot FETCH_IO_CMDS
// delivers arrays of tags into a provided-buffer ring, and the answers of
// each pass through the loop go back in one COMMIT_IO_CMDS. The per-tag
// runner (queue.h) is the fallback everywhere else.
#pragma once

#include <liburing.h>

#include <array>
#include <cstdint>
#include <vector>

#include "queue_thread.h"
#include "ublk_uapi.h"

namespace ublkts {

class BatchQueueRunner final : public QueueThread {
public:
  BatchQueueRunner(QueueConfig config, int charFd, QueueGroup *group);
  // Joins first: until then the thread may be in this class's Serve().
  ~BatchQueueRunner() override;

private:
  // Buffers the fetch command fills with tags; each completion uses one.
  static constexpr unsigned kFetchBuffers = 16;
  // Commits that may be in the kernel at once; each has its own elements.
  static constexpr unsigned kCommitBuffers = 4;

  void Serve() override;
  int Prepare();
  int SetUpFetchBuffers();
  void ArmFetch();
  void ServeUntilDone();
  void OnCompletion(uint64_t userData, int res, unsigned flags);
  void OnFetched(int res, unsigned flags);
  void OnCommitted(unsigned buffer, int res);
  void ServeRequest(unsigned tag);
  void Answer(unsigned tag, int result) override;
  void FlushAnswers();
  void PrepBatchCommand(io_uring_sqe *sqe, unsigned cmd, const void *elems, unsigned count, unsigned flags);

  bool fetchArmed_ = false;
  // The provided-buffer ring the fetch command draws from, and its buffers.
  io_uring_buf_ring *fetchRing_ = nullptr;
  size_t fetchRingBytes_ = 0;
  unsigned tagsPerFetchBuffer_ = 0;
  std::vector<uint16_t> fetchBuffers_;
  // Answers not yet handed to the kernel, and the commits in flight: an
  // element array stays untouched until its command completes.
  std::vector<ublk::batch_elem> answers_;
  std::array<std::vector<ublk::batch_elem>, kCommitBuffers> commits_;
  std::array<bool, kCommitBuffers> commitBusy_{};
  std::array<unsigned, kCommitBuffers> commitCount_{};
  unsigned commitsInflight_ = 0;
};

} // namespace ublkts
