#include "files.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "errors.h"

namespace ublkts {
namespace {

int FdArg(const Napi::CallbackInfo &info) { return info[0].As<Napi::Number>().Int32Value(); }

// flock(fd, exclusive, nonBlocking): false when another holder has it.
Napi::Value Flock(const Napi::CallbackInfo &info) {
  int op = info[1].ToBoolean().Value() ? LOCK_EX : LOCK_SH;
  if (info[2].ToBoolean().Value()) op |= LOCK_NB;
  if (flock(FdArg(info), op) == 0) return Napi::Boolean::New(info.Env(), true);
  const int err = errno;
  if (err == EWOULDBLOCK) return Napi::Boolean::New(info.Env(), false);
  MakeUblkError(info.Env(), "flock", -1, err).ThrowAsJavaScriptException();
  return info.Env().Undefined();
}

// dioAlignment(fd): {memory, offset} byte alignment for O_DIRECT, or null
// when the kernel or file system does not say (statx STATX_DIOALIGN, 6.1+).
Napi::Value DioAlignment(const Napi::CallbackInfo &info) {
  struct statx st {};
  if (statx(FdArg(info), "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) != 0 || !(st.stx_mask & STATX_DIOALIGN)) {
    return info.Env().Null();
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("memory", Napi::Number::New(info.Env(), st.stx_dio_mem_align));
  o.Set("offset", Napi::Number::New(info.Env(), st.stx_dio_offset_align));
  return o;
}

// blockDeviceGeometry(fd): {sizeBytes, logicalBlockSize} of a block device.
Napi::Value BlockDeviceGeometry(const Napi::CallbackInfo &info) {
  uint64_t size = 0;
  int logical = 0;
  int fd = FdArg(info);
  if (ioctl(fd, BLKGETSIZE64, &size) != 0 || ioctl(fd, BLKSSZGET, &logical) != 0) {
    const int err = errno;
    MakeUblkError(info.Env(), "ioctl BLKGETSIZE64", -1, err).ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("sizeBytes", Napi::Number::New(info.Env(), static_cast<double>(size)));
  o.Set("logicalBlockSize", Napi::Number::New(info.Env(), logical));
  return o;
}

} // namespace

void DefineFileFunctions(Napi::Env env, Napi::Object exports) {
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  exports.Set("dioAlignment", Napi::Function::New(env, DioAlignment, "dioAlignment"));
  exports.Set("blockDeviceGeometry", Napi::Function::New(env, BlockDeviceGeometry, "blockDeviceGeometry"));
}

} // namespace ublkts
