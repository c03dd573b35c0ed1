#include "queue.h"

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "batch_queue.h"
#include "errors.h"
#include "queue_io.h"

namespace ublkts {
namespace {

// Zero copy: the CQE of UBLK_U_IO_REGISTER_IO_BUF (or, with kUnregisterBit,
// UNREGISTER_IO_BUF) for the tag in the low bits.
constexpr uint64_t kBufferCmdBit = 1ull << 60;
constexpr uint64_t kUnregisterBit = 1ull << 59;

} // namespace

QueueRunner::QueueRunner(QueueConfig config, int charFd, QueueGroup *group)
    : QueueThread(std::move(config), charFd, group, "") {}

QueueRunner::~QueueRunner() { Join(); }

void QueueRunner::Serve() {
  if (!SetUp(RoundUp(OwnTagCount() + 2, 2), config_.ringFlags)) return;
  if (config_.autoBufReg) {
    // The table the kernel registers each request's pages in: one slot per tag.
    int ret = io_uring_register_buffers_sparse(&ring_, config_.depth);
    if (ret < 0) {
      io_uring_queue_exit(&ring_);
      mappings_.Reset();
      return Report("exit", "io_uring_register_buffers_sparse", -ret);
    }
    explicitBuffer_.assign(config_.depth, false);
    heldResult_.assign(config_.depth, 0);
    fixedDone_.assign(config_.depth, 0);
  }
  commitOp_ = ublk::io_opcode(ublk::IO_COMMIT_AND_FETCH_REQ, config_.legacyOpcodes);
  served_.assign(config_.depth, false);

  int ret = FetchAll();
  if (ret < 0) {
    Fail("FETCH_REQ", -ret);
  } else if ((ret = FirstFetchError()) != 0) {
    Fail("FETCH_REQ", -ret);
  } else {
    Report("ready", "", 0);
    liveTags_ = OwnTagCount();
    ServeUntilDone();
  }

  Exit(CloseRing());
}

// Arms the stop poll and hands every tag to the kernel.
int QueueRunner::FetchAll() {
  if (!ArmStopPoll()) return -failure_;
  const unsigned fetchOp = ublk::io_opcode(ublk::IO_FETCH_REQ, config_.legacyOpcodes);
  for (unsigned tag = config_.firstTag; tag < config_.depth; tag += config_.tagStride) PrepIoCommand(fetchOp, tag, 0);
  if (failure_ != 0) return -failure_;
  return io_uring_submit(&ring_);
}

unsigned QueueRunner::OwnTagCount() const {
  return config_.firstTag < config_.depth
             ? (config_.depth - config_.firstTag + config_.tagStride - 1) / config_.tagStride
             : 0;
}

// A FETCH_REQ the driver refuses (wrong state, tag already fetched) fails
// while it is submitted; one it accepts completes only with a request. So
// the completions already posted tell whether every tag is with the kernel.
int QueueRunner::FirstFetchError() {
  unsigned head;
  io_uring_cqe *cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    if (cqe->user_data != kStopToken && cqe->res < 0) return cqe->res;
  }
  return 0;
}

// Until every tag has ended (an error each), a stop is requested, the ring
// fails, or the kernel has aborted a fetch (STOP_DEV or QUIESCE_DEV) and
// every request already handed to this queue has been answered.
//
// After an abort the kernel hands out no new request: QUIESCE_DEV and
// STOP_DEV mark the queue canceling before they cancel the idle fetches.
// A request dispatched just before may still sit in task work, posted the
// next time this thread enters the kernel, so the queue ends only after a
// non-waiting pass into the kernel (which also submits the last commits)
// brings nothing new. The fetches those commits re-arm stay with the
// kernel until the ring is closed, which cancels them; unanswered requests
// would be requeued or failed by the kernel when /dev/ublkcN is closed,
// so every request this queue holds is answered first.
void QueueRunner::ServeUntilDone() {
  while (liveTags_ > 0 && !stopping_) {
    const bool settling = aborted_ && targetInflight_ == 0;
    if (!Reap(settling)) return;
    if (settling && completions_.empty()) return;
    for (const Completion &c : completions_) OnCompletion(c.userData, c.res);
  }
}

void QueueRunner::OnCompletion(uint64_t userData, int res) {
  if (userData == kStopToken) {
    stopping_ = true;
    return;
  }
  const unsigned tag = static_cast<unsigned>(userData & 0xffff);
  if (userData & kBufferCmdBit) return OnBufferCommand(tag, (userData & kUnregisterBit) != 0, res);
  if (userData & kTargetIoBit) {
    targetInflight_--;
    if (config_.autoBufReg && CarriesData(mappings_.Descriptor(tag))) return OnFixedIo(tag, res);
    return OnLoopIo(tag, userData, res);
  }
  if (res == ublk::IO_RES_OK) {
    ios_++;
    served_[tag] = true;
    ServeRequest(tag);
    return;
  }
  // ABORT (-ENODEV) is the normal end after STOP_DEV or QUIESCE_DEV;
  // anything else is a protocol error for this tag, which then stays with
  // the kernel.
  liveTags_--;
  if (res == -ENODEV) {
    aborted_ = true;
  } else {
    Fail(served_[tag] ? "COMMIT_AND_FETCH_REQ" : "FETCH_REQ", -res);
  }
}

void QueueRunner::ServeRequest(unsigned tag) {
  const ublk::io_desc &iod = mappings_.Descriptor(tag);
  // The kernel only warns about a write bio to a read-only disk (a stacked
  // driver or page-cache writeback can send one): the target refuses it.
  if (config_.readOnly && ChangesData(iod)) return Commit(tag, -EROFS);
  if (config_.autoBufReg && CarriesData(iod)) return ServeZeroCopyRequest(tag);
  ServeWithTarget(tag);
}

void QueueRunner::Commit(unsigned tag, int result) { PrepIoCommand(commitOp_, tag, result); }

void QueueRunner::PrepIoCommand(unsigned opcode, unsigned tag, int result) {
  io_uring_sqe *sqe = GetSqe();
  if (sqe == nullptr) return; // the ring failed: GetSqe ended the queue
  if (!config_.autoBufReg) {
    PrepIoCmd(sqe, charFd_, opcode, config_.qid, tag, result, mappings_.Buffer(tag));
    return;
  }
  // No buffer of ours: the kernel registers the next request's pages at
  // the tag's index instead. FALLBACK: if it cannot, the request still
  // comes, marked UBLK_IO_F_NEED_REG_BUF, rather than hanging.
  PrepIoCmd(sqe, charFd_, opcode, config_.qid, tag, result, nullptr);
  sqe->addr = ublk::auto_buf_reg_addr(static_cast<uint16_t>(tag), ublk::AUTO_BUF_REG_FALLBACK);
}

// Zero copy: a read or write whose bytes the kernel registered at the
// tag's index; where it could not, this queue registers them first.
void QueueRunner::ServeZeroCopyRequest(unsigned tag) {
  const ublk::io_desc &iod = mappings_.Descriptor(tag);
  if (config_.target == TargetKind::Memory) {
    if (int err = MemoryTargetBounds(config_.backingFd, &config_.sizeBytes, iod); err != 0) return Commit(tag, err);
  }
  fixedDone_[tag] = 0;
  if (iod.op_flags & ublk::IO_F_NEED_REG_BUF) return PrepBufferCommand(tag, false);
  SubmitFixedIo(tag);
}

// A zero-copy read or write is committed whole or failed, never short: on
// Linux 7.3 a short count committed for a zero-copy read completed the
// whole request, the unread part of its pages included (the copy path's
// short count makes the kernel resend the rest). So the transfer goes on
// where it stopped; a file that ends inside the request, or an error after
// partial progress, fails the whole request.
void QueueRunner::OnFixedIo(unsigned tag, int res) {
  const uint32_t bytes = IoBytes(mappings_.Descriptor(tag));
  if (res < 0) return Answer(tag, res);
  if (res == 0) return Answer(tag, -EIO);
  fixedDone_[tag] += static_cast<uint32_t>(res);
  if (fixedDone_[tag] < bytes) return SubmitFixedIo(tag);
  Answer(tag, static_cast<int>(bytes));
}

void QueueRunner::SubmitFixedIo(unsigned tag) {
  io_uring_sqe *sqe = GetSqe();
  if (sqe == nullptr) return; // the ring failed: GetSqe ended the queue
  FixedBufferPrep(sqe, config_.backingFd, mappings_.Descriptor(tag), static_cast<uint16_t>(tag), fixedDone_[tag]);
  sqe->user_data = kTargetIoBit | tag;
  targetInflight_++;
}

// UBLK_U_IO_REGISTER_IO_BUF or UNREGISTER_IO_BUF for the tag's request, at the tag's index.
void QueueRunner::PrepBufferCommand(unsigned tag, bool unregister) {
  io_uring_sqe *sqe = GetSqe();
  if (sqe == nullptr) return; // the ring failed: GetSqe ended the queue
  const unsigned opcode = ublk::io_opcode(unregister ? ublk::IO_UNREGISTER_IO_BUF : ublk::IO_REGISTER_IO_BUF, false);
  PrepIoCmd(sqe, charFd_, opcode, config_.qid, tag, 0, nullptr);
  reinterpret_cast<ublk::io_cmd *>(sqe->cmd)->addr = tag;
  sqe->user_data = kBufferCmdBit | (unregister ? kUnregisterBit : 0) | tag;
}

void QueueRunner::OnBufferCommand(unsigned tag, bool unregister, int res) {
  if (!unregister) {
    // Without its bytes the request cannot be served: it fails, with the kernel's reason.
    if (res < 0) return Commit(tag, res);
    explicitBuffer_[tag] = true;
    return SubmitFixedIo(tag);
  }
  explicitBuffer_[tag] = false;
  // The slot stays taken: later requests on this tag fall back (and fail) too. Said at exit.
  if (res < 0) Fail("UNREGISTER_IO_BUF", -res);
  Commit(tag, heldResult_[tag]);
}

// Commits a request's result, after giving back a buffer this queue
// registered itself (the kernel only unregisters its own at commit).
void QueueRunner::Answer(unsigned tag, int result) {
  if (config_.autoBufReg && explicitBuffer_[tag]) {
    heldResult_[tag] = result;
    return PrepBufferCommand(tag, true);
  }
  Commit(tag, result);
}

Napi::Function QueueGroup::Define(Napi::Env env) {
  return DefineClass(env, "QueueGroup", {InstanceMethod("stop", &QueueGroup::Stop)});
}

// new QueueGroup({devId, charPath, depth, maxIoSize, legacyOpcodes, ringFlags,
//                 target, threadsPerQueue, batchIo, queues: [{qid, cpus: number[]}]}, onEvent)
QueueGroup::QueueGroup(const Napi::CallbackInfo &info) : Napi::ObjectWrap<QueueGroup>(info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Function onEvent = info[1].As<Napi::Function>();
  uint32_t devId = o.Get("devId").As<Napi::Number>().Uint32Value();
  std::string charPath = o.Get("charPath").As<Napi::String>().Utf8Value();
  charFd_ = open(charPath.c_str(), O_RDWR | O_CLOEXEC);
  if (charFd_ < 0) {
    const int err = errno;
    MakeUblkError(env, "OPEN " + charPath, static_cast<int>(devId), err).ThrowAsJavaScriptException();
    return;
  }
  Napi::Array queues = o.Get("queues").As<Napi::Array>();
  std::shared_ptr<MemoryPages> memoryPages;
  Napi::Value threadsValue = o.Get("threadsPerQueue");
  const uint16_t threadsPerQueue =
      threadsValue.IsNumber() ? static_cast<uint16_t>(threadsValue.As<Napi::Number>().Uint32Value()) : 1;
  const bool batchIo = o.Get("batchIo").ToBoolean().Value();
  for (uint32_t i = 0; i < queues.Length(); i++) {
    Napi::Object q = queues.Get(i).As<Napi::Object>();
    QueueConfig c;
    c.devId = devId;
    c.qid = static_cast<uint16_t>(q.Get("qid").As<Napi::Number>().Uint32Value());
    c.depth = static_cast<uint16_t>(o.Get("depth").As<Napi::Number>().Uint32Value());
    c.maxIoSize = o.Get("maxIoSize").As<Napi::Number>().Uint32Value();
    c.legacyOpcodes = o.Get("legacyOpcodes").ToBoolean().Value();
    c.ringFlags = o.Get("ringFlags").As<Napi::Number>().Uint32Value();
    std::string target = o.Get("target").As<Napi::String>().Utf8Value();
    c.target = target == "loop" ? TargetKind::Loop : target == "memory" ? TargetKind::Memory : TargetKind::Null;
    Napi::Value backing = o.Get("backingFd");
    c.backingFd = backing.IsNumber() ? backing.As<Napi::Number>().Int32Value() : -1;
    c.sizeBytes = static_cast<uint64_t>(o.Get("sizeBytes").As<Napi::Number>().Int64Value());
    c.backingIsBlockDevice = o.Get("backingIsBlockDevice").ToBoolean().Value();
    c.readOnly = o.Get("readOnly").ToBoolean().Value();
    c.lockMemory = o.Get("lockMemory").ToBoolean().Value();
    c.autoBufReg = o.Get("autoBufReg").ToBoolean().Value();
    if (c.target == TargetKind::Memory) {
      // One page map for all the device's queues: a discard on one is seen by all.
      if (!memoryPages) memoryPages = std::make_shared<MemoryPages>(c.sizeBytes, sysconf(_SC_PAGESIZE));
      c.memoryPages = memoryPages;
    }
    Napi::Array cpus = q.Get("cpus").As<Napi::Array>();
    for (uint32_t k = 0; k < cpus.Length(); k++) c.cpus.push_back(cpus.Get(k).As<Napi::Number>().Int32Value());
    if (batchIo) {
      runners_.push_back(std::make_unique<BatchQueueRunner>(std::move(c), charFd_, this));
      continue;
    }
    c.tagStride = threadsPerQueue;
    // Tags dealt out in turn rather than in blocks: the block layer hands
    // out low tags first, so at a low queue depth every thread still works.
    for (uint16_t t = 0; t < threadsPerQueue; t++) {
      QueueConfig share = c;
      share.firstTag = t;
      share.thread = t;
      runners_.push_back(std::make_unique<QueueRunner>(std::move(share), charFd_, this));
    }
  }
  // The function keeps the event loop alive while any queue thread runs;
  // its finalizer runs on the JS thread once every thread has let go.
  events_ = Napi::ThreadSafeFunction::New(env, onEvent, "ublk-queue-events", 0, runners_.size(), this,
                                          [](Napi::Env, QueueGroup *group) {
                                            group->ShutdownAndJoin();
                                            group->Unref();
                                          });
  Ref(); // released when the threads are joined, so events outlive a dropped handle
  for (auto &r : runners_) r->Start();
}

QueueGroup::~QueueGroup() { ShutdownAndJoin(); }

void QueueGroup::Emit(QueueEvent *event) {
  bool exiting = std::strcmp(event->kind, "exit") == 0;
  events_.BlockingCall(event, [](Napi::Env env, Napi::Function fn, QueueEvent *e) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("qid", Napi::Number::New(env, e->qid));
    o.Set("thread", Napi::Number::New(env, e->thread));
    o.Set("kind", Napi::String::New(env, e->kind));
    o.Set("ios", Napi::Number::New(env, static_cast<double>(e->ios)));
    if (e->err != 0) {
      o.Set("error", MakeUblkError(env, e->op, -1, e->err).Value());
    }
    delete e;
    fn.Call({o});
  });
  if (exiting) events_.Release();
}

void QueueGroup::ShutdownAndJoin() {
  std::lock_guard<std::mutex> lock(joinMutex_);
  if (joined_) return;
  joined_ = true;
  for (auto &r : runners_) r->RequestStop();
  for (auto &r : runners_) r->Join();
  if (charFd_ >= 0) close(charFd_);
  charFd_ = -1;
}

Napi::Value QueueGroup::Stop(const Napi::CallbackInfo &info) {
  for (auto &r : runners_) r->RequestStop();
  return info.Env().Undefined();
}

} // namespace ublkts
