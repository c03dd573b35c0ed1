// Built-in targets: the per-IO work done on the queue thread without any JS.
#pragma once

#include <cstdint>

#include "ublk_uapi.h"

namespace ublkts {

enum class TargetKind { Null };

// The null target completes every request at once: reads return whatever
// the tag's buffer holds, writes are dropped. Used for benchmarks and tests
// of the ublk path itself.
inline int NullTargetResult(const ublk::io_desc &iod) {
  switch (iod.op_flags & 0xff) {
  case ublk::IO_OP_READ:
  case ublk::IO_OP_WRITE:
    return static_cast<int>(iod.nr_sectors) << 9;
  case ublk::IO_OP_FLUSH:
  case ublk::IO_OP_DISCARD:
  case ublk::IO_OP_WRITE_ZEROES:
    return 0;
  default:
    return -95; // EOPNOTSUPP
  }
}

} // namespace ublkts
