// libFuzzer entry point of the idx harness; the body is dtrain::fuzz::idx
// (tests/fuzz/harnesses.h).
#include "harnesses.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dtrain::fuzz::idx(data, size);
  return 0;
}
