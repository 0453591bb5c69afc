// libFuzzer entry point of the weights harness; the body is dtrain::fuzz::weights
// (tests/fuzz/harnesses.h).
#include "harnesses.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dtrain::fuzz::weights(data, size);
  return 0;
}
