#include "process.h"

#include <sys/mman.h>
#include <sys/prctl.h>

#include <cerrno>
#include <cstdint>

#include "errors.h"

namespace ublkts {

bool BecomeIoFlusher() { return prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0; }

namespace {

// lockRange(start: bigint, length: bigint): mlock, so those pages stay in
// memory. Throws UblkError "mlock" (ENOMEM past RLIMIT_MEMLOCK without
// CAP_IPC_LOCK). Not mlockall: V8 discards heap pages with
// madvise(MADV_DONTNEED), which locked memory refuses, and then aborts.
Napi::Value LockRange(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBigInt() || !info[1].IsBigInt()) {
    Napi::TypeError::New(env, "lockRange(start: bigint, length: bigint)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bool exact = true;
  const uint64_t start = info[0].As<Napi::BigInt>().Uint64Value(&exact);
  const uint64_t length = info[1].As<Napi::BigInt>().Uint64Value(&exact);
  if (mlock(reinterpret_cast<void *>(start), length) != 0) {
    const int err = errno;
    MakeUblkError(env, "mlock", -1, err).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

} // namespace

void DefineProcessFunctions(Napi::Env env, Napi::Object exports) {
  exports.Set("lockRange", Napi::Function::New(env, LockRange, "lockRange"));
}

} // namespace ublkts
