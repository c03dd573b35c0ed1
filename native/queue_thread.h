// What both native queue runners share, whichever commands they speak with
// the kernel (one per tag in queue.cpp, batched in batch_queue.cpp): the
// thread and the eventfd that stops it, the queue's mappings and io_uring,
// the "ready"/"exit" events, and the built-in targets that serve requests.
#pragma once

#include <liburing.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "queue_io.h"
#include "targets.h"

namespace ublkts {

struct QueueConfig {
  uint32_t devId = 0;
  uint16_t qid = 0;
  uint16_t depth = 0;
  uint32_t maxIoSize = 0;
  bool legacyOpcodes = false;
  unsigned ringFlags = 0;
  std::vector<int> cpus;
  TargetKind target = TargetKind::Null;
  int backingFd = -1; // loop: the backing file; memory: its /dev/shm file
  bool backingIsBlockDevice = false;
  bool readOnly = false;                    // refuse writes, discards and write-zeroes
  bool lockMemory = false;                  // mlock the IO buffers
  uint64_t sizeBytes = 0;                   // memory: the file's size as last seen (bounds of zero-copy IO)
  std::shared_ptr<MemoryPages> memoryPages; // memory: which pages hold data, shared by the device's queues
  // Zero copy: the device has UBLK_F_AUTO_BUF_REG (loop and memory only), so
  // each request's bytes are a buffer in the ring's table, index = tag.
  bool autoBufReg = false;
  // The tags this thread serves: firstTag, firstTag + tagStride, ... below
  // depth. One thread per queue serves them all (0, 1); with
  // UBLK_F_PER_IO_DAEMON a queue's tags are dealt out to several threads,
  // each the only one to issue commands for the tags it fetched.
  uint16_t firstTag = 0;
  uint16_t tagStride = 1;
  uint16_t thread = 0; // this thread's index within its queue
};

struct QueueEvent {
  uint16_t qid;
  uint16_t thread;  // index within the queue (PER_IO_DAEMON), else 0
  const char *kind; // "ready" | "exit"
  std::string op;   // what failed, when err != 0
  int err;
  uint64_t ios; // requests served, on exit
};

class QueueGroup;

// One native thread serving one ublk queue (or its share of the queue's
// tags) through one io_uring. Start() runs Serve() on the thread, named and
// pinned; RequestStop() makes the stop poll complete; Join() waits for the
// thread. Serve() ends with an "exit" event, after which the thread touches
// nothing the group owns.
class QueueThread {
public:
  QueueThread(const QueueThread &) = delete;
  QueueThread &operator=(const QueueThread &) = delete;
  virtual ~QueueThread();
  void Start();
  void RequestStop();
  void Join();

protected:
  // `nameSuffix` tells the runners apart in the thread's name ("ublk<dev>q<qid><suffix>").
  QueueThread(QueueConfig config, int charFd, QueueGroup *group, const char *nameSuffix);

  // The user data of the stop poll's completion.
  static constexpr uint64_t kStopToken = 1ull << 63;

  // Maps the queue, locks the IO buffers if asked, sets up the ring and
  // opens the memory target's file. False once it has reported the "exit"
  // that says what failed.
  bool SetUp(unsigned ringEntries, unsigned ringFlags);
  // Polls the stop eventfd on the ring; false (the queue ends) without a slot.
  bool ArmStopPoll();
  // One pass into the kernel: submits what is queued and, unless `settling`,
  // waits for a completion; the completions are copied out to completions_
  // so the CQ has room while they are answered. False once the ring failed.
  bool Reap(bool settling);
  // Waits for the target IO still in flight, then closes the ring, which
  // cancels any command still owned by the kernel. True when the IO drained.
  bool CloseRing();
  // Unmaps the buffers (or, when the IO did not drain, leaves them mapped
  // for good) and reports the "exit" with the first failure.
  void Exit(bool drained);

  // Serves a request with the built-in target: answered at once, or its loop IO submitted.
  void ServeWithTarget(unsigned tag);
  void SubmitLoopIo(unsigned tag, ZeroStage stage);
  // A loop IO completed (already counted off targetInflight_): its next stage is submitted or the request answered.
  void OnLoopIo(unsigned tag, uint64_t userData, int res);
  // Hands a request's result back to the kernel, the runner's way.
  virtual void Answer(unsigned tag, int result) = 0;

  io_uring_sqe *GetSqe();
  void Report(const char *kind, const std::string &op, int err);
  void Fail(const char *op, int err);

  QueueConfig config_;
  const int charFd_;
  int stopFd_ = -1;
  uint64_t ios_ = 0;
  // The queue thread's own state while Serve() runs.
  QueueMappings mappings_;
  io_uring ring_{};
  std::unique_ptr<MemoryStore> memory_; // the memory target's file, mapped
  uint32_t targetInflight_ = 0;         // loop target operations submitted, not completed
  bool stopping_ = false;
  // The kernel aborted the fetches (STOP_DEV or QUIESCE_DEV): it hands out no new requests.
  bool aborted_ = false;
  struct Completion {
    uint64_t userData;
    int res;
    unsigned flags;
  };
  std::vector<Completion> completions_; // what the last Reap() found
  // For the exit event: the first failure (see Fail).
  std::string failedOp_;
  int failure_ = 0;

private:
  void Run();
  virtual void Serve() = 0;

  QueueGroup *group_;
  const char *nameSuffix_;
  std::thread thread_;
};

} // namespace ublkts
