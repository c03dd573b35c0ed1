#pragma once

#include <napi.h>

namespace ublkts {

// Process- and thread-wide settings a device server needs: locking memory
// the IO path runs in, and marking a queue thread as an IO flusher.
void DefineProcessFunctions(Napi::Env env, Napi::Object exports);

// PR_SET_IO_FLUSHER on the calling thread: its allocations neither start
// IO nor wait on writeback (throttling) that may need this very device to
// make progress. Needs CAP_SYS_RESOURCE; without it the thread serves IO
// all the same, only without that protection. Returns whether it is set.
bool BecomeIoFlusher();

} // namespace ublkts
