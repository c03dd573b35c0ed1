// Entry point of the native core. Everything here is per environment
// (main thread and each worker_thread load the addon separately).
#include <napi.h>

#include "control.h"
#include "errors.h"
#include "files.h"
#include "js_queue.h"
#include "process.h"
#include "queue.h"
#include "ublk_uapi.h"

namespace ublkts {
namespace {

// init(UblkError): hands the JS error class to the addon once.
Napi::Value Init(const Napi::CallbackInfo &info) {
  AddonData *data = info.Env().GetInstanceData<AddonData>();
  data->errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  c.Set("MAX_QUEUE_DEPTH", Napi::Number::New(env, ublk::MAX_QUEUE_DEPTH));
  c.Set("MAX_NR_QUEUES", Napi::Number::New(env, ublk::MAX_NR_QUEUES));
  c.Set("MAX_IO_BUF_BYTES", Napi::Number::New(env, ublk::MAX_IO_BUF_BYTES));
  c.Set("SIZEOF_PARAMS", Napi::Number::New(env, sizeof(ublk::params)));
  c.Set("IORING_SETUP_SINGLE_ISSUER", Napi::Number::New(env, 1u << 12));
  c.Set("IORING_SETUP_DEFER_TASKRUN", Napi::Number::New(env, 1u << 13));
  c.Set("IORING_SETUP_COOP_TASKRUN", Napi::Number::New(env, 1u << 8));
  return c;
}

} // namespace

Napi::Object Register(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData<AddonData>(new AddonData());
  exports.Set("init", Napi::Function::New(env, Init, "init"));
  exports.Set("ControlDevice", ControlDevice::Define(env));
  exports.Set("QueueGroup", QueueGroup::Define(env));
  exports.Set("JsQueue", JsQueue::Define(env));
  exports.Set("constants", Constants(env));
  DefineFileFunctions(env, exports);
  DefineProcessFunctions(env, exports);
  return exports;
}

} // namespace ublkts

static Napi::Object RegisterAddon(Napi::Env env, Napi::Object exports) { return ublkts::Register(env, exports); }

NODE_API_MODULE(ublk_ts, RegisterAddon)
