#include "errors.h"

namespace ublkts {

Napi::Error MakeUblkError(Napi::Env env, const std::string &op, int devId, int err) {
  // Constructing UblkError runs JS, which cannot happen with an exception
  // pending, and throwing over it would hide the first error.
  if (env.IsExceptionPending()) return env.GetAndClearPendingException();
  AddonData *data = env.GetInstanceData<AddonData>();
  if (data == nullptr || data->errorClass.IsEmpty()) {
    return Napi::Error::New(env, op + ": errno " + std::to_string(err));
  }
  Napi::Object error =
      data->errorClass.New({Napi::String::New(env, op), Napi::Number::New(env, devId), Napi::Number::New(env, err)});
  return Napi::Error(env, error);
}

} // namespace ublkts
