#include "js_queue.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <sched.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "errors.h"
#include "process.h"
#include "queue_io.h"
#include "targets.h"
#include "ublk_uapi.h"

namespace ublkts {
Napi::Function JsQueue::Define(Napi::Env env) {
  return DefineClass(env, "JsQueue",
                     {
                         InstanceMethod("fetchAll", &JsQueue::FetchAll),
                         InstanceMethod("commit", &JsQueue::Commit),
                         InstanceMethod("submitTargetIo", &JsQueue::SubmitTargetIo),
                         InstanceMethod("close", &JsQueue::Close),
                     });
}

// new JsQueue({devId, qid, charFd, depth, maxIoSize, legacyOpcodes, lockMemory}, onEvents)
// onEvents(arrivals, targetCompletions, ended) is called once per batch.
JsQueue::JsQueue(const Napi::CallbackInfo &info) : Napi::ObjectWrap<JsQueue>(info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  devId_ = o.Get("devId").As<Napi::Number>().Uint32Value();
  qid_ = static_cast<uint16_t>(o.Get("qid").As<Napi::Number>().Uint32Value());
  depth_ = static_cast<uint16_t>(o.Get("depth").As<Napi::Number>().Uint32Value());
  maxIoSize_ = o.Get("maxIoSize").As<Napi::Number>().Uint32Value();
  bool legacy = o.Get("legacyOpcodes").ToBoolean().Value();
  fetchOp_ = ublk::io_opcode(ublk::IO_FETCH_REQ, legacy);
  commitOp_ = ublk::io_opcode(ublk::IO_COMMIT_AND_FETCH_REQ, legacy);
  onEvents_ = Napi::Persistent(info[1].As<Napi::Function>());
  // The char device admits one opener per device, so all queues share the
  // server's descriptor; this object never closes it.
  charFd_ = o.Get("charFd").As<Napi::Number>().Int32Value();
  // This constructor runs on the thread that serves the queue (its worker):
  // named like a native queue thread, and an IO flusher like one.
  const std::string name = "ublk" + std::to_string(devId_) + "q" + std::to_string(qid_);
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
  BecomeIoFlusher();
  int id = static_cast<int>(devId_);
  auto fail = [&](const std::string &op, int err) {
    Release();
    MakeUblkError(env, op, id, err).ThrowAsJavaScriptException();
  };

  owned_.assign(depth_, false);
  mappings_ = std::make_shared<QueueMappings>(charFd_, qid_, depth_, maxIoSize_);
  if (mappings_->Errno() != 0) {
    fail(mappings_->FailedOp(), mappings_->Errno());
    return;
  }
  if (o.Get("lockMemory").ToBoolean().Value()) {
    if (int err = mappings_->LockBuffers(); err != 0) {
      fail("mlock io buffers", err);
      return;
    }
  }

  // Room for every tag's command plus as many target operations again.
  targetCapacity_ = depth_ * 2u;
  int ret = io_uring_queue_init(RoundUp(depth_ + targetCapacity_ + 2, 2), &ring_, 0);
  if (ret < 0) {
    fail("io_uring_setup", -ret);
    return;
  }
  ringReady_ = true;
  eventFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (eventFd_ < 0) {
    fail("eventfd", errno);
    return;
  }
  ret = io_uring_register_eventfd(&ring_, eventFd_);
  if (ret < 0) {
    fail("io_uring_register_eventfd", -ret);
    return;
  }

  Napi::ArrayBuffer arrivals = Napi::ArrayBuffer::New(env, depth_ * sizeof(uint32_t));
  Napi::ArrayBuffer target = Napi::ArrayBuffer::New(env, targetCapacity_ * 2 * sizeof(int32_t));
  arrivals_ = static_cast<uint32_t *>(arrivals.Data());
  targetDone_ = static_cast<int32_t *>(target.Data());
  arrivalsRef_ = Napi::Persistent(arrivals);
  targetRef_ = Napi::Persistent(target);

  // The IO buffers without a copy. Writing to the kernel's descriptor
  // array (mapped read-only) would crash the process, so JS gets a copy.
  Napi::Object self = info.This().As<Napi::Object>();
  Napi::ArrayBuffer descriptors = Napi::ArrayBuffer::New(env, depth_ * sizeof(ublk::io_desc));
  descriptorCopies_ = static_cast<ublk::io_desc *>(descriptors.Data());
  descriptorsRef_ = Napi::Persistent(descriptors);
  self.Set("descriptors", descriptors);
  using Share = std::shared_ptr<QueueMappings>;
  Napi::ArrayBuffer buffers = Napi::ArrayBuffer::New(
      env, mappings_->Buffers(), mappings_->BufferBytes(), [](Napi::Env, void *, Share *share) { delete share; },
      new Share(mappings_));
  buffersRef_ = Napi::Persistent(buffers);
  self.Set("buffers", buffers);
  self.Set("arrivals", Napi::Uint32Array::New(env, depth_, arrivals, 0));
  self.Set("targetCompletions", Napi::Int32Array::New(env, targetCapacity_ * 2, target, 0));

  uv_loop_t *loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  poll_ = new uv_poll_t;
  uv_poll_init(loop, poll_, eventFd_);
  poll_->data = this;
}

JsQueue::~JsQueue() { Release(); }

// An SQE, submitting what is queued until one is free: the ring has room
// for every tag's command and targetCapacity_ target operations, so one
// frees up once the kernel has taken the earlier ones. Null (with a
// UblkError thrown) only when the ring cannot submit at all.
io_uring_sqe *JsQueue::Sqe(const Napi::Env &env, const char *op) {
  for (;;) {
    io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
    if (sqe != nullptr) return sqe;
    int ret = io_uring_submit(&ring_);
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      MakeUblkError(env, op, static_cast<int>(devId_), -ret).ThrowAsJavaScriptException();
      return nullptr;
    }
    if (ret <= 0) sched_yield();
  }
}

// A FETCH_REQ the driver refuses fails while it is submitted; one it
// accepts completes only with a request (see QueueRunner::FirstFetchError).
int JsQueue::FirstFetchError() {
  unsigned head;
  io_uring_cqe *cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    if (!(cqe->user_data & kTargetIoBit) && cqe->res < 0) return cqe->res;
  }
  return 0;
}

Napi::Value JsQueue::FetchAll(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!ringReady_ || liveTags_ != 0 || ended_) {
    Napi::Error::New(env, "fetchAll: the queue is closed or already fetched").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  for (unsigned tag = 0; tag < depth_; tag++) {
    io_uring_sqe *sqe = Sqe(env, "FETCH_REQ");
    if (sqe == nullptr) return env.Undefined();
    PrepIoCmd(sqe, charFd_, fetchOp_, qid_, tag, 0, mappings_->Buffer(tag));
  }
  int ret = io_uring_submit(&ring_);
  if (ret >= 0) ret = FirstFetchError();
  if (ret < 0) {
    MakeUblkError(env, "FETCH_REQ", static_cast<int>(devId_), -ret).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  liveTags_ = depth_;
  Ref(); // the poll handle refers to this object until the queue ends
  refHeld_ = true;
  uv_poll_start(poll_, UV_READABLE, &JsQueue::OnPoll);
  return info.Env().Undefined();
}

namespace {

bool IsTypedArrayOf(const Napi::Value &v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

bool IsUint32(const Napi::Value &v) {
  if (!v.IsNumber()) return false;
  const double d = v.As<Napi::Number>().DoubleValue();
  return d >= 0 && d <= 4294967295.0 && d == static_cast<double>(static_cast<uint64_t>(d));
}

bool IsNonNegativeSafeInteger(const Napi::Value &v) {
  if (!v.IsNumber()) return false;
  const double d = v.As<Napi::Number>().DoubleValue();
  return d >= 0 && d <= 9007199254740991.0 && d == static_cast<double>(static_cast<uint64_t>(d));
}

Napi::Value ThrowRange(const Napi::Env &env, const std::string &message) {
  Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

} // namespace

// commit(tags: Uint32Array, results: Int32Array, count): answers the
// requests of tags[0..count). Every tag must be one whose request JS holds
// (arrived and not yet committed); nothing is committed unless all are.
Napi::Value JsQueue::Commit(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!IsTypedArrayOf(info[0], napi_uint32_array) || !IsTypedArrayOf(info[1], napi_int32_array) || !IsUint32(info[2])) {
    Napi::TypeError::New(env, "commit(tags: Uint32Array, results: Int32Array, count: integer >= 0)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint32Array tags = info[0].As<Napi::Uint32Array>();
  Napi::Int32Array results = info[1].As<Napi::Int32Array>();
  const uint32_t count = info[2].As<Napi::Number>().Uint32Value();
  if (count > tags.ElementLength() || count > results.ElementLength()) {
    return ThrowRange(env, "commit: count " + std::to_string(count) + " exceeds tags (" +
                               std::to_string(tags.ElementLength()) + ") or results (" +
                               std::to_string(results.ElementLength()) + ")");
  }
  if (ended_) return env.Undefined();
  for (uint32_t i = 0; i < count; i++) {
    if (tags[i] >= depth_) {
      return ThrowRange(env, "commit: tags[" + std::to_string(i) + "] = " + std::to_string(tags[i]) +
                                 " is not a tag of this queue (depth " + std::to_string(depth_) + ")");
    }
  }
  for (uint32_t i = 0; i < count; i++) {
    const uint32_t tag = tags[i];
    if (!owned_[tag]) {
      for (uint32_t k = 0; k < i; k++) owned_[tags[k]] = true; // nothing committed: all still held
      return ThrowRange(env, "commit: tag " + std::to_string(tag) + " (tags[" + std::to_string(i) +
                                 "]) has no request to answer (not arrived, or committed twice)");
    }
    owned_[tag] = false; // also catches the same tag twice in this batch
  }
  ownedCount_ -= count;
  for (uint32_t i = 0; i < count; i++) {
    io_uring_sqe *sqe = Sqe(env, "COMMIT_AND_FETCH_REQ");
    if (sqe == nullptr) return env.Undefined();
    PrepIoCmd(sqe, charFd_, commitOp_, qid_, tags[i], results[i], mappings_->Buffer(tags[i]));
  }
  int ret = io_uring_submit(&ring_);
  if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
    MakeUblkError(env, "COMMIT_AND_FETCH_REQ", static_cast<int>(devId_), -ret).ThrowAsJavaScriptException();
  }
  // The last answer after an abort: no completion will wake Drain, so wake it.
  if (aborted_ && ownedCount_ == 0) Wake();
  return env.Undefined();
}

// submitTargetIo(write: boolean, tag, fd, length, fileOffset, token): the
// completion comes back through onEvents as a (token, result) pair.
// Requests tag's buffer to be read from or written to fd at fileOffset.
// In flight at most targetCapacity_ at a time (the result arrays' room);
// beyond that it throws EBUSY.
Napi::Value JsQueue::SubmitTargetIo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBoolean() || !IsUint32(info[1]) || !IsUint32(info[2]) || !IsUint32(info[3]) ||
      !IsNonNegativeSafeInteger(info[4]) || !IsUint32(info[5])) {
    Napi::TypeError::New(env, "submitTargetIo(write: boolean, tag, fd, length, fileOffset, token): "
                              "integers >= 0 (fileOffset a safe integer)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bool write = info[0].As<Napi::Boolean>().Value();
  uint32_t tag = info[1].As<Napi::Number>().Uint32Value();
  int fd = static_cast<int>(info[2].As<Napi::Number>().Uint32Value());
  uint32_t length = info[3].As<Napi::Number>().Uint32Value();
  uint64_t offset = static_cast<uint64_t>(info[4].As<Napi::Number>().Int64Value());
  uint32_t token = info[5].As<Napi::Number>().Uint32Value();
  if (tag >= depth_) {
    return ThrowRange(env, "submitTargetIo: tag " + std::to_string(tag) + " is not a tag of this queue (depth " +
                               std::to_string(depth_) + ")");
  }
  if (length > maxIoSize_) {
    return ThrowRange(env, "submitTargetIo: length " + std::to_string(length) + " exceeds the tag's buffer (" +
                               std::to_string(maxIoSize_) + " bytes)");
  }
  if (fd > INT32_MAX || token > INT32_MAX) return ThrowRange(env, "submitTargetIo: fd and token must be below 2^31");
  if (ended_ || !ringReady_) {
    MakeUblkError(env, "submitTargetIo", static_cast<int>(devId_), ESHUTDOWN).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (targetInflight_ >= targetCapacity_) {
    MakeUblkError(env, "submitTargetIo", static_cast<int>(devId_), EBUSY).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  io_uring_sqe *sqe = Sqe(env, "submitTargetIo");
  if (sqe == nullptr) return env.Undefined();
  targetInflight_++;
  uint8_t *buffer = mappings_->Buffer(tag);
  if (write) {
    io_uring_prep_write(sqe, fd, buffer, length, offset);
  } else {
    io_uring_prep_read(sqe, fd, buffer, length, offset);
  }
  sqe->user_data = kTargetIoBit | token;
  io_uring_submit(&ring_);
  return info.Env().Undefined();
}

void JsQueue::OnPoll(uv_poll_t *handle, int, int) { static_cast<JsQueue *>(handle->data)->Drain(); }

// Makes the poll fire as if the ring had posted a completion.
void JsQueue::Wake() {
  uint64_t one = 1;
  if (eventFd_ >= 0) (void)!write(eventFd_, &one, sizeof(one));
}

void JsQueue::Drain() {
  uint64_t value;
  while (read(eventFd_, &value, sizeof(value)) > 0) {
  }
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  for (;;) {
    // Entering the kernel runs pending task work, which posts more CQEs.
    io_uring_submit_and_get_events(&ring_);
    const bool abortedBefore = aborted_;
    uint32_t arrived = 0;
    uint32_t targets = 0;
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe *cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (arrived >= depth_ || targets >= targetCapacity_) break;
      seen++;
      const uint64_t data = cqe->user_data;
      if (data & kTargetIoBit) {
        targetDone_[targets * 2] = static_cast<int32_t>(data & 0xffffffffu);
        targetDone_[targets * 2 + 1] = cqe->res;
        targets++;
        if (targetInflight_ > 0) targetInflight_--;
      } else if (cqe->res == ublk::IO_RES_OK) {
        const uint32_t tag = static_cast<uint32_t>(data & 0xffff);
        owned_[tag] = true;
        ownedCount_++;
        descriptorCopies_[tag] = mappings_->Descriptor(tag);
        arrivals_[arrived++] = tag;
      } else if (liveTags_ > 0) {
        liveTags_--; // ABORT after STOP_DEV or QUIESCE_DEV, or a failed command: the tag is done
        if (cqe->res == -ENODEV) aborted_ = true;
      }
    }
    io_uring_cq_advance(&ring_, seen);
    // After an abort the queue ends once JS has answered every request it
    // was handed and a later pass into the kernel (above) brought nothing
    // new: see QueueRunner::ServeUntilDone.
    const bool answeredAll = abortedBefore && ownedCount_ == 0 && targetInflight_ == 0 && arrived == 0 && targets == 0;
    bool endedNow = (liveTags_ == 0 || answeredAll) && !ended_;
    if (arrived == 0 && targets == 0 && !endedNow) {
      if (aborted_ && !abortedBefore) continue; // that later pass
      break;
    }
    if (endedNow) ended_ = true;
    // MakeCallback, not Call: promise reactions queued by the handlers run
    // right after the batch, as for any other I/O callback.
    onEvents_.MakeCallback(env.Global(), {Napi::Number::New(env, arrived), Napi::Number::New(env, targets),
                                          Napi::Boolean::New(env, endedNow)});
    // The callback may have closed the queue (the target shut down).
    if (!ringReady_) return;
    if (env.IsExceptionPending()) break;
    if (ended_) {
      uv_poll_stop(poll_);
      DropRef();
      break;
    }
  }
}

Napi::Value JsQueue::Close(const Napi::CallbackInfo &info) {
  ended_ = true;
  DropRef();
  Release();
  DetachBuffers(info.Env());
  return info.Env().Undefined();
}

// Every view of the IO buffers (a Buffer a target kept) reads as empty
// from now on, and the buffers are unmapped once the ArrayBuffer lets go.
void JsQueue::DetachBuffers(Napi::Env env) {
  if (buffersRef_.IsEmpty()) return;
  napi_value buffers = buffersRef_.Value();
  napi_detach_arraybuffer(env, buffers);
  buffersRef_.Reset();
}

void JsQueue::DropRef() {
  if (!refHeld_) return;
  refHeld_ = false;
  Unref();
}

void JsQueue::Release() {
  if (poll_ != nullptr) {
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t *>(poll_), [](uv_handle_t *h) { delete reinterpret_cast<uv_poll_t *>(h); });
    poll_ = nullptr;
  }
  bool drained = true;
  if (ringReady_) {
    // readFile/writeFile operations still in flight use the buffers until
    // they complete (see AwaitTargetIo); their results no longer matter.
    drained = AwaitTargetIo(&ring_, &targetInflight_, kTargetDrainMs);
    io_uring_queue_exit(&ring_);
    ringReady_ = false;
  }
  if (eventFd_ >= 0) close(eventFd_);
  eventFd_ = -1;
  // Leaking the buffers beats unmapping them under the kernel.
  if (!drained && mappings_) mappings_->Abandon();
  // The buffers' ArrayBuffer holds its own share until it is detached or collected.
  mappings_.reset();
}

} // namespace ublkts
