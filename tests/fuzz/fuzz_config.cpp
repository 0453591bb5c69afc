// libFuzzer entry point of the config harness; the body is dtrain::fuzz::config
// (tests/fuzz/harnesses.h).
#include "harnesses.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dtrain::fuzz::config(data, size);
  return 0;
}
