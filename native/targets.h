// Built-in targets: the per-IO work done on the queue thread without any JS.
#pragma once

#include <liburing.h>

#include <cstdint>

#include "ublk_uapi.h"

namespace ublkts {

enum class TargetKind { Null, Loop, Memory };

// Marks a CQE as the completion of target IO (not of a ublk command).
constexpr uint64_t kTargetIoBit = 1ull << 62;
// WRITE_ZEROES falls back in stages where FALLOC_FL_ZERO_RANGE is missing
// (tmpfs): punch a hole, then, for NOUNMAP, allocate the range again.
enum class ZeroStage : unsigned { ZeroRange = 0, PunchHole = 1, Allocate = 2 };
constexpr unsigned kStageShift = 48;
inline uint64_t StageBits(ZeroStage s) { return static_cast<uint64_t>(s) << kStageShift; }
inline ZeroStage StageOf(uint64_t userData) { return static_cast<ZeroStage>((userData >> kStageShift) & 3); }

inline unsigned IoOp(const ublk::io_desc &iod) { return iod.op_flags & 0xff; }
inline unsigned IoFlags(const ublk::io_desc &iod) { return iod.op_flags >> 8 << 8; }
inline uint64_t IoOffset(const ublk::io_desc &iod) { return iod.start_sector << 9; }
inline uint32_t IoBytes(const ublk::io_desc &iod) { return iod.nr_sectors << 9; }

// Whether a request changes the device's bytes (refused on a read-only device).
inline bool ChangesData(const ublk::io_desc &iod) {
  const unsigned op = IoOp(iod);
  return op == ublk::IO_OP_WRITE || op == ublk::IO_OP_DISCARD || op == ublk::IO_OP_WRITE_ZEROES;
}

// The null target completes every request at once: reads return whatever
// the tag's buffer holds, writes are dropped.
int NullTargetResult(const ublk::io_desc &iod);

// The memory target: a tmpfs file holding the device's bytes. Pages exist only
// where data was written (reads of holes come back as zeroes without
// allocating); discard and write-zeroes punch holes and give memory back.
// `sizeBytes` is the queue's view of the file's size: a request beyond it
// looks at the file again (an online resize grows the file before the
// kernel sends IO there), so the target never writes past the file's end.
int MemoryTargetIo(int fd, uint64_t *sizeBytes, const ublk::io_desc &iod, uint8_t *buffer);

// True for the requests the loop target turns into a backing-file operation.
bool LoopTargetSupports(const ublk::io_desc &iod);

// DISCARD on a block device backing the loop target: BLKDISCARD, done on
// the queue thread. (A hole punch there is a zero-out that fails with
// EOPNOTSUPP where the device cannot write zeroes, and it is not a discard.)
int BlockDeviceDiscard(int fd, const ublk::io_desc &iod);

// The loop target: prepares the backing-file operation for a request on the
// queue's own ring (for WRITE_ZEROES, the one of `stage`). Only for requests
// LoopTargetSupports; any other op gets a NOP.
void LoopTargetPrep(io_uring_sqe *sqe, int fd, const ublk::io_desc &iod, uint8_t *buffer, ZeroStage stage);

// Turns the backing file's CQE result into the request's result: a short
// count stays short (the kernel resends the rest), and a read or write that
// moved nothing is -EIO. Returns true with *next set when the request needs
// another stage.
bool LoopTargetComplete(const ublk::io_desc &iod, int res, ZeroStage stage, ZeroStage *next, int *result);

// Zero copy (UBLK_F_AUTO_BUF_REG): the requests whose bytes the kernel
// registers as a buffer in the queue ring's table, which only an io_uring
// operation on that ring can reach (the server's CPU never sees them).
inline bool CarriesData(const ublk::io_desc &iod) {
  const unsigned op = IoOp(iod);
  return op == ublk::IO_OP_READ || op == ublk::IO_OP_WRITE;
}

// Zero copy: prepares the READ_FIXED or WRITE_FIXED between the backing
// file (loop) or the memory target's tmpfs file and the request's
// registered buffer at `bufIndex`, for the request's bytes from `done` on
// (a transfer that came back short goes on from there). A kernel-registered
// buffer starts at address 0, so the address is the offset into it.
void FixedBufferPrep(io_uring_sqe *sqe, int fd, const ublk::io_desc &iod, uint16_t bufIndex, uint32_t done);

// The memory target's bounds check, for a request served on the ring: 0
// when the request lies inside the file (looked at again when it seems not
// to: an online resize grows the file first), -EIO when it does not.
int MemoryTargetBounds(int fd, uint64_t *sizeBytes, const ublk::io_desc &iod);

} // namespace ublkts
