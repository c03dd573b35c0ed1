#pragma once

#include <liburing.h>
#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "queue_io.h"
#include "ublk_uapi.h"

namespace ublkts {

// One ublk queue served from JavaScript: the queue's io_uring is polled on
// the libuv loop of the thread that made it (a worker_thread per queue), so
// requests reach JS handlers without a thread hop. The IO buffers are
// handed to JS as an external ArrayBuffer (no copies), detached by close();
// each arriving request's descriptor is copied into a JS-owned array, since
// the kernel's is mapped read-only. Arrivals are passed in batches through
// shared arrays, and one commit() call answers many requests.
class JsQueue : public Napi::ObjectWrap<JsQueue> {
public:
  static Napi::Function Define(Napi::Env env);
  explicit JsQueue(const Napi::CallbackInfo &info);
  ~JsQueue() override;

private:
  Napi::Value FetchAll(const Napi::CallbackInfo &info);
  Napi::Value Commit(const Napi::CallbackInfo &info);
  Napi::Value SubmitTargetIo(const Napi::CallbackInfo &info);
  Napi::Value Close(const Napi::CallbackInfo &info);

  static void OnPoll(uv_poll_t *handle, int status, int events);
  void Drain();
  void Wake();
  void Release();
  void DropRef();
  void DetachBuffers(Napi::Env env);
  io_uring_sqe *Sqe(const Napi::Env &env, const char *op);
  int FirstFetchError();

  uint32_t devId_ = 0;
  uint16_t qid_ = 0;
  uint16_t depth_ = 0;
  uint32_t maxIoSize_ = 0;
  unsigned fetchOp_ = 0;
  unsigned commitOp_ = 0;
  int charFd_ = -1;
  int eventFd_ = -1;
  // Shared with the buffers' ArrayBuffer, whose finalizer drops its share:
  // the IO buffers are unmapped only once no JS view can reach them.
  std::shared_ptr<QueueMappings> mappings_;
  io_uring ring_{};
  bool ringReady_ = false;
  uv_poll_t *poll_ = nullptr;
  unsigned liveTags_ = 0;
  // Tags whose request JS holds: only those may be committed, once each.
  std::vector<bool> owned_;
  uint32_t ownedCount_ = 0;
  // The kernel aborted a fetch (STOP_DEV or QUIESCE_DEV): it hands out no more requests.
  bool aborted_ = false;
  // Target operations submitted and not yet completed; at most targetCapacity_.
  uint32_t targetInflight_ = 0;
  bool ended_ = false;
  bool refHeld_ = false;
  // Filled by Drain() for JS: tags of new requests; (token, result) pairs of target IO.
  uint32_t *arrivals_ = nullptr;
  int32_t *targetDone_ = nullptr;
  uint32_t targetCapacity_ = 0;
  Napi::FunctionReference onEvents_;
  Napi::Reference<Napi::ArrayBuffer> arrivalsRef_;
  Napi::Reference<Napi::ArrayBuffer> targetRef_;
  Napi::Reference<Napi::ArrayBuffer> buffersRef_;
  // JS's copy of the descriptors of the requests it was handed.
  ublk::io_desc *descriptorCopies_ = nullptr;
  Napi::Reference<Napi::ArrayBuffer> descriptorsRef_;
};

} // namespace ublkts
