#pragma once

#include <napi.h>

namespace ublkts {

// Syscalls on backing files that Node's fs module does not offer:
// flock, statx's direct-IO alignment, block device geometry.
void DefineFileFunctions(Napi::Env env, Napi::Object exports);

} // namespace ublkts
