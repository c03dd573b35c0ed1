#pragma once

#include <napi.h>

namespace ublkts {

// /dev/ublk-control and the io_uring commands sent to it. Every command runs
// on a worker thread with a private SQE128 ring, so a blocking command
// (START_DEV waits for every queue to fetch) never stalls the JS thread or
// another command.
class ControlDevice : public Napi::ObjectWrap<ControlDevice> {
public:
  static Napi::Function Define(Napi::Env env);
  explicit ControlDevice(const Napi::CallbackInfo &info);
  ~ControlDevice() override;

private:
  Napi::Value GetFeatures(const Napi::CallbackInfo &info);
  Napi::Value AddDev(const Napi::CallbackInfo &info);
  Napi::Value DelDev(const Napi::CallbackInfo &info);
  Napi::Value StartDev(const Napi::CallbackInfo &info);
  Napi::Value StopDev(const Napi::CallbackInfo &info);
  Napi::Value TryStopDev(const Napi::CallbackInfo &info);
  Napi::Value StartUserRecovery(const Napi::CallbackInfo &info);
  Napi::Value EndUserRecovery(const Napi::CallbackInfo &info);
  Napi::Value QuiesceDev(const Napi::CallbackInfo &info);
  Napi::Value SetParams(const Napi::CallbackInfo &info);
  Napi::Value GetParams(const Napi::CallbackInfo &info);
  Napi::Value GetDevInfo(const Napi::CallbackInfo &info);
  Napi::Value GetQueueAffinity(const Napi::CallbackInfo &info);
  Napi::Value UpdateSize(const Napi::CallbackInfo &info);
  Napi::Value SetLegacyOpcodes(const Napi::CallbackInfo &info);
  Napi::Value Close(const Napi::CallbackInfo &info);

  int fd_ = -1;
  bool legacyOpcodes_ = false;
};

} // namespace ublkts
