#include "control.h"

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "errors.h"
#include "ublk_uapi.h"

namespace ublkts {
namespace {

constexpr __u16 kNoQueue = 0xffff;

// The op a failure to set up the command's own ring is reported under: it
// says nothing about the command, everything about io_uring on this host
// (disabled by sysctl, blocked by seccomp, too old for SQE128).
constexpr const char *kRingSetupOp = "IO_URING_SETUP";

// Sends one control command on a private ring; returns the CQE result
// (>= 0 on success, -errno on failure). `ringFailed` tells a failure to set
// up the ring apart from the command's own.
int RunControlCommand(int fd, unsigned opcode, const ublk::ctrl_cmd &header, bool *ringFailed) {
  io_uring ring;
  int ret = io_uring_queue_init(2, &ring, IORING_SETUP_SQE128);
  *ringFailed = ret < 0;
  if (ret < 0) return ret;
  io_uring_sqe *sqe = io_uring_get_sqe(&ring);
  if (sqe == nullptr) {
    io_uring_queue_exit(&ring);
    return -EBUSY;
  }
  std::memset(static_cast<void *>(sqe), 0, 2 * sizeof(io_uring_sqe));
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = opcode;
  sqe->user_data = 1;
  std::memcpy(sqe->cmd, &header, sizeof(header));
  ret = io_uring_submit(&ring);
  if (ret >= 0) {
    io_uring_cqe *cqe = nullptr;
    do {
      ret = io_uring_wait_cqe(&ring, &cqe);
    } while (ret == -EINTR);
    if (ret == 0) {
      ret = cqe->res;
      io_uring_cqe_seen(&ring, cqe);
    }
  }
  io_uring_queue_exit(&ring);
  return ret;
}

using ResultBuilder = std::function<Napi::Value(Napi::Env, const std::vector<uint8_t> &, int)>;

// One control command as a Promise. `payload` is the command's in/out buffer
// (header.addr points into it on the worker thread).
class CommandWorker : public Napi::AsyncWorker {
public:
  CommandWorker(Napi::Env env, int fd, std::string op, unsigned opcode, ublk::ctrl_cmd header,
                std::vector<uint8_t> payload, ResultBuilder build)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd >= 0 ? dup(fd) : -1),
        op_(std::move(op)), opcode_(opcode), header_(header), payload_(std::move(payload)), build_(std::move(build)) {}

  ~CommandWorker() override {
    if (fd_ >= 0) close(fd_);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  // GET_DEV_INFO2 falls back to GET_DEV_INFO on kernels (< 6.3) or setups
  // (no /dev/ublkcN node) where it cannot answer. An error is reported
  // under the name of the command that gave it.
  void SetFallback(std::string op, unsigned opcode, std::vector<uint8_t> payload, size_t skip) {
    fallbackOp_ = std::move(op);
    fallbackOpcode_ = opcode;
    fallbackPayload_ = std::move(payload);
    fallbackSkip_ = skip;
  }

protected:
  void Execute() override {
    if (fd_ < 0) {
      result_ = -EBADF;
      return;
    }
    result_ = Send(opcode_, payload_);
    if (result_ < 0 && fallbackOpcode_ != 0 && result_ != -ENODEV && !ringFailed_) {
      header_.dev_path_len = 0;
      payload_ = std::move(fallbackPayload_);
      op_ = fallbackOp_;
      result_ = Send(fallbackOpcode_, payload_);
    } else if (result_ >= 0 && fallbackOpcode_ != 0) {
      payload_.erase(payload_.begin(), payload_.begin() + fallbackSkip_);
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (result_ < 0) {
      deferred_.Reject(MakeUblkError(env, ringFailed_ ? kRingSetupOp : op_, DevIdForError(), -result_).Value());
      return;
    }
    deferred_.Resolve(build_ ? build_(env, payload_, result_) : env.Undefined());
  }

  void OnError(const Napi::Error &e) override { deferred_.Reject(e.Value()); }

private:
  int Send(unsigned opcode, std::vector<uint8_t> &payload) {
    header_.addr = payload.empty() ? 0 : reinterpret_cast<__u64>(payload.data());
    header_.len = static_cast<__u16>(payload.size());
    return RunControlCommand(fd_, opcode, header_, &ringFailed_);
  }

  int DevIdForError() const { return header_.dev_id == 0xffffffffu ? -1 : static_cast<int>(header_.dev_id); }

  Napi::Promise::Deferred deferred_;
  int fd_;
  std::string op_;
  unsigned opcode_;
  ublk::ctrl_cmd header_;
  std::vector<uint8_t> payload_;
  ResultBuilder build_;
  std::string fallbackOp_;
  unsigned fallbackOpcode_ = 0;
  std::vector<uint8_t> fallbackPayload_;
  size_t fallbackSkip_ = 0;
  int result_ = 0;
  bool ringFailed_ = false;
};

ublk::ctrl_cmd Header(uint32_t devId) {
  ublk::ctrl_cmd h{};
  h.dev_id = devId;
  h.queue_id = kNoQueue;
  return h;
}

uint32_t DevIdArg(const Napi::CallbackInfo &info, size_t index) { return info[index].As<Napi::Number>().Uint32Value(); }

uint64_t BigIntArg(Napi::Value v) {
  bool lossless = true;
  return v.As<Napi::BigInt>().Uint64Value(&lossless);
}

Napi::Object DevInfoToJs(Napi::Env env, const ublk::ctrl_dev_info &d) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("devId", Napi::Number::New(env, d.dev_id));
  o.Set("queues", Napi::Number::New(env, d.nr_hw_queues));
  o.Set("depth", Napi::Number::New(env, d.queue_depth));
  o.Set("state", Napi::Number::New(env, d.state));
  o.Set("maxIoBufBytes", Napi::Number::New(env, d.max_io_buf_bytes));
  o.Set("serverPid", Napi::Number::New(env, d.ublksrv_pid));
  o.Set("flags", Napi::BigInt::New(env, static_cast<uint64_t>(d.flags)));
  o.Set("ownerUid", Napi::Number::New(env, d.owner_uid));
  o.Set("ownerGid", Napi::Number::New(env, d.owner_gid));
  return o;
}

ublk::ctrl_dev_info DevInfoFromBytes(const std::vector<uint8_t> &bytes) {
  ublk::ctrl_dev_info d{};
  std::memcpy(&d, bytes.data(), std::min(bytes.size(), sizeof(d)));
  return d;
}

uint32_t Field(Napi::Object o, const char *name) {
  Napi::Value v = o.Get(name);
  return v.IsNumber() ? v.As<Napi::Number>().Uint32Value() : 0;
}

uint64_t Field64(Napi::Object o, const char *name) {
  Napi::Value v = o.Get(name);
  if (v.IsBigInt()) return BigIntArg(v);
  return v.IsNumber() ? static_cast<uint64_t>(v.As<Napi::Number>().Int64Value()) : 0;
}

ublk::params ParamsFromJs(Napi::Object o) {
  ublk::params p{};
  p.len = sizeof(p);
  p.types = Field(o, "types");
  if (o.Has("basic")) {
    Napi::Object b = o.Get("basic").As<Napi::Object>();
    p.basic.attrs = Field(b, "attrs");
    p.basic.logical_bs_shift = static_cast<__u8>(Field(b, "logicalBsShift"));
    p.basic.physical_bs_shift = static_cast<__u8>(Field(b, "physicalBsShift"));
    p.basic.io_opt_shift = static_cast<__u8>(Field(b, "ioOptShift"));
    p.basic.io_min_shift = static_cast<__u8>(Field(b, "ioMinShift"));
    p.basic.max_sectors = Field(b, "maxSectors");
    p.basic.chunk_sectors = Field(b, "chunkSectors");
    p.basic.dev_sectors = Field64(b, "devSectors");
    p.basic.virt_boundary_mask = Field64(b, "virtBoundaryMask");
  }
  if (o.Has("discard")) {
    Napi::Object d = o.Get("discard").As<Napi::Object>();
    p.discard.discard_alignment = Field(d, "discardAlignment");
    p.discard.discard_granularity = Field(d, "discardGranularity");
    p.discard.max_discard_sectors = Field(d, "maxDiscardSectors");
    p.discard.max_write_zeroes_sectors = Field(d, "maxWriteZeroesSectors");
    p.discard.max_discard_segments = static_cast<__u16>(Field(d, "maxDiscardSegments"));
  }
  return p;
}

Napi::Object ParamsToJs(Napi::Env env, const ublk::params &p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("types", Napi::Number::New(env, p.types));
  Napi::Object b = Napi::Object::New(env);
  b.Set("attrs", Napi::Number::New(env, p.basic.attrs));
  b.Set("logicalBsShift", Napi::Number::New(env, p.basic.logical_bs_shift));
  b.Set("physicalBsShift", Napi::Number::New(env, p.basic.physical_bs_shift));
  b.Set("ioOptShift", Napi::Number::New(env, p.basic.io_opt_shift));
  b.Set("ioMinShift", Napi::Number::New(env, p.basic.io_min_shift));
  b.Set("maxSectors", Napi::Number::New(env, p.basic.max_sectors));
  b.Set("chunkSectors", Napi::Number::New(env, p.basic.chunk_sectors));
  b.Set("devSectors", Napi::Number::New(env, static_cast<double>(p.basic.dev_sectors)));
  b.Set("virtBoundaryMask", Napi::BigInt::New(env, static_cast<uint64_t>(p.basic.virt_boundary_mask)));
  o.Set("basic", b);
  Napi::Object d = Napi::Object::New(env);
  d.Set("discardAlignment", Napi::Number::New(env, p.discard.discard_alignment));
  d.Set("discardGranularity", Napi::Number::New(env, p.discard.discard_granularity));
  d.Set("maxDiscardSectors", Napi::Number::New(env, p.discard.max_discard_sectors));
  d.Set("maxWriteZeroesSectors", Napi::Number::New(env, p.discard.max_write_zeroes_sectors));
  d.Set("maxDiscardSegments", Napi::Number::New(env, p.discard.max_discard_segments));
  o.Set("discard", d);
  Napi::Object t = Napi::Object::New(env);
  t.Set("charMajor", Napi::Number::New(env, p.devt.char_major));
  t.Set("charMinor", Napi::Number::New(env, p.devt.char_minor));
  t.Set("diskMajor", Napi::Number::New(env, p.devt.disk_major));
  t.Set("diskMinor", Napi::Number::New(env, p.devt.disk_minor));
  o.Set("devt", t);
  return o;
}

template <typename T> std::vector<uint8_t> BytesOf(const T &value) {
  std::vector<uint8_t> v(sizeof(T));
  std::memcpy(v.data(), &value, sizeof(T));
  return v;
}

} // namespace

Napi::Function ControlDevice::Define(Napi::Env env) {
  return DefineClass(env, "ControlDevice",
                     {
                         InstanceMethod("getFeatures", &ControlDevice::GetFeatures),
                         InstanceMethod("addDev", &ControlDevice::AddDev),
                         InstanceMethod("delDev", &ControlDevice::DelDev),
                         InstanceMethod("startDev", &ControlDevice::StartDev),
                         InstanceMethod("stopDev", &ControlDevice::StopDev),
                         InstanceMethod("tryStopDev", &ControlDevice::TryStopDev),
                         InstanceMethod("startUserRecovery", &ControlDevice::StartUserRecovery),
                         InstanceMethod("endUserRecovery", &ControlDevice::EndUserRecovery),
                         InstanceMethod("quiesceDev", &ControlDevice::QuiesceDev),
                         InstanceMethod("setParams", &ControlDevice::SetParams),
                         InstanceMethod("getParams", &ControlDevice::GetParams),
                         InstanceMethod("getDevInfo", &ControlDevice::GetDevInfo),
                         InstanceMethod("getQueueAffinity", &ControlDevice::GetQueueAffinity),
                         InstanceMethod("updateSize", &ControlDevice::UpdateSize),
                         InstanceMethod("setLegacyOpcodes", &ControlDevice::SetLegacyOpcodes),
                         InstanceMethod("close", &ControlDevice::Close),
                     });
}

ControlDevice::ControlDevice(const Napi::CallbackInfo &info) : Napi::ObjectWrap<ControlDevice>(info) {
  std::string path = info[0].As<Napi::String>().Utf8Value();
  fd_ = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    const int err = errno;
    MakeUblkError(info.Env(), "OPEN " + path, -1, err).ThrowAsJavaScriptException();
  }
}

ControlDevice::~ControlDevice() {
  if (fd_ >= 0) close(fd_);
}

Napi::Value ControlDevice::Close(const Napi::CallbackInfo &info) {
  // Each outstanding command holds its own dup of the descriptor.
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  return info.Env().Undefined();
}

Napi::Value ControlDevice::SetLegacyOpcodes(const Napi::CallbackInfo &info) {
  legacyOpcodes_ = info[0].As<Napi::Boolean>().Value();
  return info.Env().Undefined();
}

Napi::Value ControlDevice::GetFeatures(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(0xffffffffu);
  auto *w = new CommandWorker(info.Env(), fd_, "GET_FEATURES", ublk::ctrl_opcode_read(ublk::CMD_GET_FEATURES, false), h,
                              std::vector<uint8_t>(8),
                              [](Napi::Env env, const std::vector<uint8_t> &buf, int) -> Napi::Value {
                                uint64_t features = 0;
                                std::memcpy(&features, buf.data(), sizeof(features));
                                return Napi::BigInt::New(env, features);
                              });
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::AddDev(const Napi::CallbackInfo &info) {
  Napi::Object o = info[0].As<Napi::Object>();
  ublk::ctrl_dev_info d{};
  d.dev_id = static_cast<__u32>(o.Get("devId").As<Napi::Number>().Int64Value());
  d.nr_hw_queues = static_cast<__u16>(Field(o, "queues"));
  d.queue_depth = static_cast<__u16>(Field(o, "depth"));
  d.max_io_buf_bytes = Field(o, "maxIoBufBytes");
  d.flags = Field64(o, "flags");
  d.ublksrv_pid = static_cast<__s32>(getpid());
  ublk::ctrl_cmd h = Header(d.dev_id);
  auto *w = new CommandWorker(info.Env(), fd_, "ADD_DEV", ublk::ctrl_opcode(ublk::CMD_ADD_DEV, legacyOpcodes_), h,
                              BytesOf(d), [](Napi::Env env, const std::vector<uint8_t> &buf, int) -> Napi::Value {
                                return DevInfoToJs(env, DevInfoFromBytes(buf));
                              });
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::DelDev(const Napi::CallbackInfo &info) {
  bool async = info.Length() > 1 && info[1].ToBoolean().Value();
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  unsigned opcode = async ? ublk::ctrl_opcode_read(ublk::CMD_DEL_DEV_ASYNC, false)
                          : ublk::ctrl_opcode(ublk::CMD_DEL_DEV, legacyOpcodes_);
  auto *w = new CommandWorker(info.Env(), fd_, async ? "DEL_DEV_ASYNC" : "DEL_DEV", opcode, h, {}, nullptr);
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::StartDev(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  h.data[0] = info[1].As<Napi::Number>().Int64Value();
  auto *w = new CommandWorker(info.Env(), fd_, "START_DEV", ublk::ctrl_opcode(ublk::CMD_START_DEV, legacyOpcodes_), h,
                              {}, nullptr);
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::StopDev(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  auto *w = new CommandWorker(info.Env(), fd_, "STOP_DEV", ublk::ctrl_opcode(ublk::CMD_STOP_DEV, legacyOpcodes_), h, {},
                              nullptr);
  w->Queue();
  return w->Promise();
}

// TRY_STOP_DEV: STOP_DEV only if no one has /dev/ublkbN open (EBUSY
// otherwise); the kernel checks and then refuses new opens under the disk's
// open mutex, so nothing can open the device between the check and the stop.
Napi::Value ControlDevice::TryStopDev(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  auto *w = new CommandWorker(info.Env(), fd_, "TRY_STOP_DEV", ublk::ctrl_opcode(ublk::CMD_TRY_STOP_DEV, false), h, {},
                              nullptr);
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::StartUserRecovery(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  auto *w = new CommandWorker(info.Env(), fd_, "START_USER_RECOVERY",
                              ublk::ctrl_opcode(ublk::CMD_START_USER_RECOVERY, legacyOpcodes_), h, {}, nullptr);
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::EndUserRecovery(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  h.data[0] = info[1].As<Napi::Number>().Int64Value();
  auto *w = new CommandWorker(info.Env(), fd_, "END_USER_RECOVERY",
                              ublk::ctrl_opcode(ublk::CMD_END_USER_RECOVERY, legacyOpcodes_), h, {}, nullptr);
  w->Queue();
  return w->Promise();
}

// quiesceDev(devId, timeoutMs): the kernel stops handing requests to the
// server and completes its idle fetches with UBLK_IO_RES_ABORT, waiting up
// to timeoutMs for every queue to have one idle tag (EBUSY after that).
Napi::Value ControlDevice::QuiesceDev(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  h.data[0] = info[1].As<Napi::Number>().Uint32Value();
  auto *w = new CommandWorker(info.Env(), fd_, "QUIESCE_DEV", ublk::ctrl_opcode(ublk::CMD_QUIESCE_DEV, false), h, {},
                              nullptr);
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::SetParams(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  ublk::params p = ParamsFromJs(info[1].As<Napi::Object>());
  auto *w = new CommandWorker(info.Env(), fd_, "SET_PARAMS", ublk::ctrl_opcode(ublk::CMD_SET_PARAMS, legacyOpcodes_), h,
                              BytesOf(p), nullptr);
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::GetParams(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  ublk::params p{};
  p.len = sizeof(p);
  auto *w =
      new CommandWorker(info.Env(), fd_, "GET_PARAMS", ublk::ctrl_opcode_read(ublk::CMD_GET_PARAMS, legacyOpcodes_), h,
                        BytesOf(p), [](Napi::Env env, const std::vector<uint8_t> &buf, int) -> Napi::Value {
                          ublk::params out{};
                          std::memcpy(&out, buf.data(), std::min(buf.size(), sizeof(out)));
                          return ParamsToJs(env, out);
                        });
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::GetDevInfo(const Napi::CallbackInfo &info) {
  uint32_t devId = DevIdArg(info, 0);
  ublk::ctrl_cmd h = Header(devId);
  // GET_DEV_INFO2 carries the char device path in front of the payload so
  // the kernel can check permissions on unprivileged devices.
  std::string path = "/dev/ublkc" + std::to_string(devId);
  std::vector<uint8_t> withPath(path.size() + 1 + sizeof(ublk::ctrl_dev_info), 0);
  std::memcpy(withPath.data(), path.c_str(), path.size() + 1);
  h.dev_path_len = static_cast<__u16>(path.size() + 1);
  auto build = [](Napi::Env env, const std::vector<uint8_t> &buf, int) -> Napi::Value {
    return DevInfoToJs(env, DevInfoFromBytes(buf));
  };
  CommandWorker *w;
  if (legacyOpcodes_) {
    h.dev_path_len = 0;
    w = new CommandWorker(info.Env(), fd_, "GET_DEV_INFO", ublk::ctrl_opcode_read(ublk::CMD_GET_DEV_INFO, true), h,
                          std::vector<uint8_t>(sizeof(ublk::ctrl_dev_info)), build);
  } else {
    w = new CommandWorker(info.Env(), fd_, "GET_DEV_INFO2", ublk::ctrl_opcode_read(ublk::CMD_GET_DEV_INFO2, false), h,
                          std::move(withPath), build);
    w->SetFallback("GET_DEV_INFO", ublk::ctrl_opcode_read(ublk::CMD_GET_DEV_INFO, false),
                   std::vector<uint8_t>(sizeof(ublk::ctrl_dev_info)), path.size() + 1);
  }
  w->Queue();
  return w->Promise();
}

Napi::Value ControlDevice::GetQueueAffinity(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  h.data[0] = info[1].As<Napi::Number>().Uint32Value();
  // Room for 8192 CPUs; the kernel insists the buffer covers nr_cpu_ids.
  auto *w = new CommandWorker(
      info.Env(), fd_, "GET_QUEUE_AFFINITY", ublk::ctrl_opcode_read(ublk::CMD_GET_QUEUE_AFFINITY, legacyOpcodes_), h,
      std::vector<uint8_t>(1024), [](Napi::Env env, const std::vector<uint8_t> &buf, int) -> Napi::Value {
        Napi::Array cpus = Napi::Array::New(env);
        uint32_t n = 0;
        for (size_t byte = 0; byte < buf.size(); byte++) {
          for (int bit = 0; bit < 8; bit++) {
            if (buf[byte] & (1u << bit)) cpus.Set(n++, Napi::Number::New(env, byte * 8 + bit));
          }
        }
        return cpus;
      });
  w->Queue();
  return w->Promise();
}

// updateSize(devId, sectors: bigint): UPDATE_SIZE, the device's new capacity
// in 512-byte sectors. There is no legacy number: every kernel that has it
// (6.16+) understands the ioctl encoding.
Napi::Value ControlDevice::UpdateSize(const Napi::CallbackInfo &info) {
  ublk::ctrl_cmd h = Header(DevIdArg(info, 0));
  h.data[0] = BigIntArg(info[1]);
  auto *w = new CommandWorker(info.Env(), fd_, "UPDATE_SIZE", ublk::ctrl_opcode(ublk::CMD_UPDATE_SIZE, false), h, {},
                              nullptr);
  w->Queue();
  return w->Promise();
}

} // namespace ublkts
