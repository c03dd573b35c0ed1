// One error type crosses the native boundary: the JS UblkError class, handed
// to the addon once at load time and constructed here with data, not prose.
#pragma once

#include <napi.h>

#include <string>

namespace ublkts {

struct AddonData {
  Napi::FunctionReference errorClass;
};

// Builds `new UblkError(op, devId, errno)`; devId < 0 means "no device".
// With an exception already pending, returns that exception instead (and
// clears it), as Napi::Error::New(env) does: throwing the result keeps it
// pending, rejecting with it passes it on.
Napi::Error MakeUblkError(Napi::Env env, const std::string &op, int devId, int err);

// A plain result for async work: filled on a worker thread, turned into a
// JS value or UblkError on the JS thread.
struct OpFailure {
  std::string op;
  int devId = -1;
  int err = 0;
  bool failed() const { return err != 0; }
  void set(const std::string &o, int d, int e) {
    op = o;
    devId = d;
    err = e;
  }
};

} // namespace ublkts
