#pragma once

#include <liburing.h>
#include <napi.h>

#include <atomic>
#include <memory>
#include <mutex>
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
class BatchQueueRunner;

// One ublk hardware queue (or, with PER_IO_DAEMON, its share of the queue's
// tags) served by one native thread and one io_uring: FETCH_REQ for every
// tag, then COMMIT_AND_FETCH_REQ for each request.
class QueueRunner {
public:
  QueueRunner(QueueConfig config, int charFd, QueueGroup *group);
  ~QueueRunner();
  void Start();
  void RequestStop();
  void Join();

private:
  void Run();
  void Serve();
  int FetchAll();
  void ServeUntilDone();
  void OnCompletion(uint64_t userData, int res);
  void ServeRequest(unsigned tag);
  void SubmitLoopIo(unsigned tag, ZeroStage stage);
  void Commit(unsigned tag, int result);
  void ServeZeroCopyRequest(unsigned tag);
  void SubmitFixedIo(unsigned tag);
  void PrepBufferCommand(unsigned tag, bool unregister);
  void OnBufferCommand(unsigned tag, bool unregister, int res);
  void FinishTargetIo(unsigned tag, int result);
  void OnFixedIo(unsigned tag, int res);
  void PrepIoCommand(unsigned opcode, unsigned tag, int result);
  io_uring_sqe *GetSqe();
  int FirstFetchError();
  unsigned OwnTagCount() const;
  void Report(const char *kind, const std::string &op, int err);
  void Fail(const char *op, int err);

  QueueConfig config_;
  int charFd_;
  int stopFd_ = -1;
  QueueGroup *group_;
  std::thread thread_;
  uint64_t ios_ = 0;
  // The queue thread's own state while Serve() runs.
  QueueMappings mappings_;
  io_uring ring_{};
  unsigned commitOp_ = 0;
  unsigned liveTags_ = 0;
  std::unique_ptr<MemoryStore> memory_; // the memory target's file, mapped
  uint32_t targetInflight_ = 0;         // loop target operations submitted, not completed
  bool stopping_ = false;
  // The kernel aborted a fetch: it hands out no more requests (see ServeUntilDone).
  bool aborted_ = false;
  // Which tags have had a request: a failed command is FETCH_REQ before, COMMIT_AND_FETCH_REQ after.
  std::vector<bool> served_;
  // Zero copy: tags whose buffer this queue registered itself (the kernel's
  // registration failed: UBLK_IO_F_NEED_REG_BUF), to unregister before the
  // commit, and the result that commit will carry meanwhile.
  std::vector<bool> explicitBuffer_;
  std::vector<int> heldResult_;
  // Zero copy: bytes of each tag's read or write moved so far.
  std::vector<uint32_t> fixedDone_;
  // One batch of completions, copied out so the CQ has room while they are answered.
  std::vector<std::pair<uint64_t, int>> batch_;
  // For the exit event: the first failed tag, unless the ring itself fails later.
  std::string failedOp_;
  int failure_ = 0;
};

// The queues of one device, as seen from JS: started together, stopped
// together, each reporting "ready" (all tags fetched) and "exit" events.
class QueueGroup : public Napi::ObjectWrap<QueueGroup> {
public:
  static Napi::Function Define(Napi::Env env);
  explicit QueueGroup(const Napi::CallbackInfo &info);
  ~QueueGroup() override;

  void Emit(QueueEvent *event);
  void ShutdownAndJoin();

private:
  Napi::Value Stop(const Napi::CallbackInfo &info);

  int charFd_ = -1;
  std::vector<std::unique_ptr<QueueRunner>> runners_;
  // A device with UBLK_F_BATCH_IO is served by these instead, one per queue.
  std::vector<std::unique_ptr<BatchQueueRunner>> batchRunners_;
  Napi::ThreadSafeFunction events_;
  std::mutex joinMutex_;
  bool joined_ = false;
};

} // namespace ublkts
