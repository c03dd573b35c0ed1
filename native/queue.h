#pragma once

#include <liburing.h>
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "queue_io.h"
#include "queue_thread.h"
#include "targets.h"

namespace ublkts {

// One ublk hardware queue (or, with PER_IO_DAEMON, its share of the queue's
// tags) served by one native thread and one io_uring: FETCH_REQ for every
// tag, then COMMIT_AND_FETCH_REQ for each request.
class QueueRunner final : public QueueThread {
public:
  QueueRunner(QueueConfig config, int charFd, QueueGroup *group);
  // Joins first: until then the thread may be in this class's Serve().
  ~QueueRunner() override;

private:
  void Serve() override;
  int FetchAll();
  void ServeUntilDone();
  void OnCompletion(uint64_t userData, int res);
  void ServeRequest(unsigned tag);
  void Answer(unsigned tag, int result) override;
  void Commit(unsigned tag, int result);
  void ServeZeroCopyRequest(unsigned tag);
  void SubmitFixedIo(unsigned tag);
  void PrepBufferCommand(unsigned tag, bool unregister);
  void OnBufferCommand(unsigned tag, bool unregister, int res);
  void OnFixedIo(unsigned tag, int res);
  void PrepIoCommand(unsigned opcode, unsigned tag, int result);
  int FirstFetchError();
  unsigned OwnTagCount() const;

  unsigned commitOp_ = 0;
  unsigned liveTags_ = 0;
  // Which tags have had a request: a failed command is FETCH_REQ before, COMMIT_AND_FETCH_REQ after.
  std::vector<bool> served_;
  // Zero copy: tags whose buffer this queue registered itself (the kernel's
  // registration failed: UBLK_IO_F_NEED_REG_BUF), to unregister before the
  // commit, and the result that commit will carry meanwhile.
  std::vector<bool> explicitBuffer_;
  std::vector<int> heldResult_;
  // Zero copy: bytes of each tag's read or write moved so far.
  std::vector<uint32_t> fixedDone_;
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
  // QueueRunners, or for a device with UBLK_F_BATCH_IO a BatchQueueRunner per queue.
  std::vector<std::unique_ptr<QueueThread>> runners_;
  Napi::ThreadSafeFunction events_;
  std::mutex joinMutex_;
  bool joined_ = false;
};

} // namespace ublkts
