// The ublk kernel UAPI, written out here because the distribution header
// (linux-libc-dev 6.1 on Debian 12) predates features this project probes for.
// Layouts follow include/uapi/linux/ublk_cmd.h; sizes are checked below.
#pragma once

#include <linux/ioctl.h>
#include <linux/types.h>

namespace ublk {

// Control command numbers. The legacy opcode is the bare number; kernels
// from 6.4 also accept (and from some configs require) the ioctl encoding.
enum CtrlCmd : unsigned {
  CMD_GET_QUEUE_AFFINITY = 0x01,
  CMD_GET_DEV_INFO = 0x02,
  CMD_ADD_DEV = 0x04,
  CMD_DEL_DEV = 0x05,
  CMD_START_DEV = 0x06,
  CMD_STOP_DEV = 0x07,
  CMD_SET_PARAMS = 0x08,
  CMD_GET_PARAMS = 0x09,
  CMD_START_USER_RECOVERY = 0x10,
  CMD_END_USER_RECOVERY = 0x11,
  CMD_GET_DEV_INFO2 = 0x12,
  CMD_GET_FEATURES = 0x13,  // ioctl-encoded only (6.5+)
  CMD_DEL_DEV_ASYNC = 0x14, // ioctl-encoded only (6.9+)
  CMD_UPDATE_SIZE = 0x15,   // ioctl-encoded only (6.16+): data[0] = new size in sectors
  CMD_QUIESCE_DEV = 0x16,   // ioctl-encoded only (6.16+), data[0] = timeout in ms (0: none)
  CMD_TRY_STOP_DEV = 0x17,  // ioctl-encoded only (7.0+, UBLK_F_SAFE_STOP_DEV)
};

enum IoCmd : unsigned {
  IO_FETCH_REQ = 0x20,
  IO_COMMIT_AND_FETCH_REQ = 0x21,
  IO_NEED_GET_DATA = 0x22,
  IO_REGISTER_IO_BUF = 0x23,   // ioctl-encoded only (6.15+): io_cmd.addr = buffer index
  IO_UNREGISTER_IO_BUF = 0x24, // ioctl-encoded only (6.15+): io_cmd.addr = buffer index
};

// UBLK_F_BATCH_IO (7.0+): per-queue commands carrying arrays, which
// replace FETCH_REQ / COMMIT_AND_FETCH_REQ on a batch device (those then
// fail with EOPNOTSUPP). Ioctl-encoded only, with batch_io as the payload.
enum BatchCmd : unsigned {
  IO_PREP_IO_CMDS = 0x25,   // one-shot: makes the listed tags ready (as FETCH_REQ did)
  IO_COMMIT_IO_CMDS = 0x26, // one-shot: answers the listed tags; res = element bytes done
  IO_FETCH_IO_CMDS = 0x27,  // multishot: posts arrays of u16 tags into provided buffers
};

// The 16-byte command payload of the three batch commands.
struct batch_io {
  __u16 q_id;
  __u16 flags; // BATCH_F_*; 0 for FETCH_IO_CMDS
  __u16 nr_elem;
  __u8 elem_bytes; // 8 + 8 per optional field (2 for FETCH_IO_CMDS: one u16 tag)
  __u8 reserved;
  __u64 reserved2;
};

// One element of PREP_IO_CMDS / COMMIT_IO_CMDS with BATCH_F_HAS_BUF_ADDR.
struct batch_elem {
  __u16 tag;
  __u16 buf_index; // AUTO_BUF_REG only
  __s32 result;    // COMMIT_IO_CMDS only
  __u64 buf_addr;  // the tag's buffer for its next request (copy mode)
};

constexpr unsigned BATCH_F_HAS_BUF_ADDR = 1u << 1;
// At most this many tags in one FETCH_IO_CMDS completion.
constexpr unsigned BATCH_FETCH_MAX_TAGS = 128;

struct ctrl_cmd {
  __u32 dev_id;
  __u16 queue_id; // 0xffff when the command is not for a queue
  __u16 len;
  __u64 addr;
  __u64 data[1];
  __u16 dev_path_len; // GET_DEV_INFO2 and unprivileged devices only
  __u16 pad;
  __u32 reserved;
};

struct ctrl_dev_info {
  __u16 nr_hw_queues;
  __u16 queue_depth;
  __u16 state;
  __u16 pad0;
  __u32 max_io_buf_bytes;
  __u32 dev_id;
  __s32 ublksrv_pid;
  __u32 pad1;
  __u64 flags;
  __u64 ublksrv_flags;
  __u32 owner_uid;
  __u32 owner_gid;
  __u64 reserved1;
  __u64 reserved2;
};

struct io_desc {
  __u32 op_flags; // op in bits 0-7, UBLK_IO_F_* in bits 8-31
  __u32 nr_sectors;
  __u64 start_sector;
  __u64 addr;
};

struct io_cmd {
  __u16 q_id;
  __u16 tag;
  __s32 result;
  __u64 addr;
};

struct param_basic {
  __u32 attrs;
  __u8 logical_bs_shift;
  __u8 physical_bs_shift;
  __u8 io_opt_shift;
  __u8 io_min_shift;
  __u32 max_sectors;
  __u32 chunk_sectors;
  __u64 dev_sectors;
  __u64 virt_boundary_mask;
};

struct param_discard {
  __u32 discard_alignment;
  __u32 discard_granularity;
  __u32 max_discard_sectors;
  __u32 max_write_zeroes_sectors;
  __u16 max_discard_segments;
  __u16 reserved0;
};

struct param_devt {
  __u32 char_major;
  __u32 char_minor;
  __u32 disk_major;
  __u32 disk_minor;
};

struct param_zoned {
  __u32 max_open_zones;
  __u32 max_active_zones;
  __u32 max_zone_append_sectors;
  __u8 reserved[20];
};

// The prefix of struct ublk_params that every kernel since 6.0 understands
// (plus zoned, 6.6); the kernel takes `len` into account for older/newer peers.
struct params {
  __u32 len;
  __u32 types;
  param_basic basic;
  param_discard discard;
  param_devt devt;
  param_zoned zoned;
};

static_assert(sizeof(ctrl_cmd) == 32, "ublksrv_ctrl_cmd layout");
static_assert(sizeof(ctrl_dev_info) == 64, "ublksrv_ctrl_dev_info layout");
static_assert(sizeof(io_desc) == 24, "ublksrv_io_desc layout");
static_assert(sizeof(io_cmd) == 16, "ublksrv_io_cmd layout");
static_assert(sizeof(batch_io) == 16, "ublk_batch_io layout");
static_assert(sizeof(batch_elem) == 16, "ublk_elem_header + buf_addr layout");
static_assert(sizeof(param_basic) == 32, "ublk_param_basic layout");
static_assert(sizeof(param_discard) == 20, "ublk_param_discard layout");
static_assert(sizeof(params) == 112, "ublk_params prefix layout");

constexpr unsigned PARAM_TYPE_BASIC = 1u << 0;
constexpr unsigned PARAM_TYPE_DISCARD = 1u << 1;
constexpr unsigned PARAM_TYPE_DEVT = 1u << 2;
constexpr unsigned PARAM_TYPE_ZONED = 1u << 3;

constexpr unsigned ATTR_READ_ONLY = 1u << 0;
constexpr unsigned ATTR_ROTATIONAL = 1u << 1;
constexpr unsigned ATTR_VOLATILE_CACHE = 1u << 2;
constexpr unsigned ATTR_FUA = 1u << 3;

constexpr __u64 F_SUPPORT_ZERO_COPY = 1ull << 0;
constexpr __u64 F_URING_CMD_COMP_IN_TASK = 1ull << 1;
constexpr __u64 F_NEED_GET_DATA = 1ull << 2;
constexpr __u64 F_USER_RECOVERY = 1ull << 3;
constexpr __u64 F_USER_RECOVERY_REISSUE = 1ull << 4;
constexpr __u64 F_UNPRIVILEGED_DEV = 1ull << 5;
constexpr __u64 F_CMD_IOCTL_ENCODE = 1ull << 6;
constexpr __u64 F_USER_COPY = 1ull << 7;
constexpr __u64 F_ZONED = 1ull << 8;
constexpr __u64 F_USER_RECOVERY_FAIL_IO = 1ull << 9;
constexpr __u64 F_UPDATE_SIZE = 1ull << 10;
// The kernel registers each request's pages in the queue ring's buffer
// table (at the index sqe->addr names) before handing the request over,
// and unregisters them at COMMIT_AND_FETCH_REQ (6.16+).
constexpr __u64 F_AUTO_BUF_REG = 1ull << 11;
constexpr __u64 F_QUIESCE = 1ull << 12;  // QUIESCE_DEV; the kernel requires F_USER_RECOVERY with it
constexpr __u64 F_BATCH_IO = 1ull << 15; // PREP/FETCH/COMMIT_IO_CMDS instead of the per-tag commands

constexpr unsigned IO_OP_READ = 0;
constexpr unsigned IO_OP_WRITE = 1;
constexpr unsigned IO_OP_FLUSH = 2;
constexpr unsigned IO_OP_DISCARD = 3;
constexpr unsigned IO_OP_WRITE_SAME = 4;
constexpr unsigned IO_OP_WRITE_ZEROES = 5;

constexpr unsigned IO_F_FUA = 1u << 13;
constexpr unsigned IO_F_NOUNMAP = 1u << 15;
// F_AUTO_BUF_REG with AUTO_BUF_REG_FALLBACK: the automatic registration
// failed, so the server registers the request's buffer itself.
constexpr unsigned IO_F_NEED_REG_BUF = 1u << 17;

// struct ublk_auto_buf_reg, passed in the sqe->addr of FETCH_REQ and
// COMMIT_AND_FETCH_REQ: bits 0-15 the buffer index, 16-23 the flags, the
// rest reserved (zero).
constexpr __u8 AUTO_BUF_REG_FALLBACK = 1u << 0;
inline __u64 auto_buf_reg_addr(__u16 index, __u8 flags) {
  return static_cast<__u64>(index) | (static_cast<__u64>(flags) << 16);
}

constexpr int IO_RES_OK = 0;
constexpr int IO_RES_NEED_GET_DATA = 1;
// IO_RES_ABORT is -ENODEV: the device is stopping (STOP_DEV) or quiescing
// (QUIESCE_DEV); the tag is not re-fetched.

constexpr __u64 CMD_BUF_OFFSET = 0;
constexpr unsigned MAX_QUEUE_DEPTH = 4096;
constexpr unsigned MAX_NR_QUEUES = 4096;
constexpr unsigned MAX_IO_BUF_BYTES = 1u << 25;

inline unsigned ctrl_opcode(CtrlCmd cmd, bool legacy) {
  return legacy ? static_cast<unsigned>(cmd) : static_cast<unsigned>(_IOWR('u', cmd, ctrl_cmd));
}

// The UAPI encodes the commands that only return data with _IOR; keep the
// same direction bits so strict kernels see exactly the documented numbers.
inline unsigned ctrl_opcode_read(CtrlCmd cmd, bool legacy) {
  return legacy ? static_cast<unsigned>(cmd) : static_cast<unsigned>(_IOR('u', cmd, ctrl_cmd));
}

inline unsigned batch_opcode(BatchCmd cmd) { return static_cast<unsigned>(_IOWR('u', cmd, batch_io)); }

inline unsigned io_opcode(IoCmd cmd, bool legacy) {
  return legacy ? static_cast<unsigned>(cmd) : static_cast<unsigned>(_IOWR('u', cmd, io_cmd));
}

} // namespace ublk
