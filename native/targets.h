// Built-in targets: the per-IO work done on the queue thread without any JS.
#pragma once

#include <liburing.h>

#include <cstdint>
#include <memory>
#include <vector>

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

// Which pages of a memory device's file are known to hold data, shared by
// the device's queues: a set bit lets a queue copy through its mapping
// without asking the kernel first (mincore, a system call per request).
// A bit is set once its page is seen in the file (mincore, or a pwrite
// that allocated it) and cleared before a discard or write-zeroes punches
// the page, on whichever queue. A stale bit is never wrong data: the
// mapping then finds a hole, which a read fault fills with a zeroed page
// (costing that page), or a page past the file's end, which the copy
// survives (see GuardedCopy in targets.cpp). That happens only when a read
// races a discard of the same pages, or a range was shrunk away and grown
// back. Pages past the size the device started with have no bits: those
// always ask mincore.
class MemoryPages {
public:
  MemoryPages(uint64_t sizeBytes, uint64_t pageSize);
  ~MemoryPages();
  MemoryPages(const MemoryPages &) = delete;
  MemoryPages &operator=(const MemoryPages &) = delete;

  // Whether every page in [first, first + count) is known to be in the file.
  bool AllKnown(uint64_t first, uint64_t count) const;
  void Mark(uint64_t first, uint64_t count);
  void Forget(uint64_t first, uint64_t count);

private:
  // Anonymous memory, never written where no page was: a large sparse device costs little.
  uint64_t *words_ = nullptr;
  uint64_t pages_ = 0;
  size_t bytes_ = 0;
};

// The memory target: a tmpfs file holding the device's bytes. Pages exist only
// where data was written (reads of holes come back as zeroes without
// allocating); discard and write-zeroes punch holes and give memory back.
//
// Data already in the file moves with a memcpy through a shared mapping of
// it, which costs less than the file system's read and write paths (no
// system call, inode lock or per-page lookup). Only pages known to be in
// the file (MemoryPages, else mincore) are touched that way: a fault on a
// hole would allocate a page for a read, and one past the file's end would
// be SIGBUS. Holes and anything the mapping cannot reach take
// pread/pwrite, as before. One per queue, used only by its thread.
class MemoryStore {
public:
  // `sizeBytes` is the file's size when the queue starts; `maxIoBytes` the
  // largest request; `pages` the device's shared page map (may be null).
  MemoryStore(int fd, uint64_t sizeBytes, uint32_t maxIoBytes, std::shared_ptr<MemoryPages> pages);
  ~MemoryStore();
  MemoryStore(const MemoryStore &) = delete;
  MemoryStore &operator=(const MemoryStore &) = delete;

  // Serves one request: bytes moved, 0, or -errno.
  int Io(const ublk::io_desc &iod, uint8_t *buffer);

private:
  // Maps the first size_ bytes of the file, replacing a shorter mapping; without one, IO takes pread/pwrite.
  void Map();
  // Whether the mapping may be touched for [offset, offset + bytes): every page known or found (mincore) in the file.
  bool InFile(uint64_t offset, uint32_t bytes);
  // Moves a request's data through the mapping: false (nothing to trust) if a page turned out to be gone.
  bool CopyMapped(bool write, uint64_t offset, uint32_t bytes, uint8_t *buffer);

  int fd_;
  // The file's size as last seen: a request beyond it looks at the file
  // again (an online resize grows the file before the kernel sends IO
  // there), so the target never writes past the file's end.
  uint64_t size_;
  uint8_t *map_ = nullptr;
  uint64_t mapped_ = 0;
  uint64_t pageSize_;
  std::shared_ptr<MemoryPages> pages_;
  std::vector<unsigned char> residency_; // mincore's answer, one byte per page of a request
};

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
