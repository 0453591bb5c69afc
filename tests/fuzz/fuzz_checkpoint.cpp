// libFuzzer entry point of the checkpoint harness; the body is
// dtrain::fuzz::checkpoint (tests/fuzz/harnesses.h).
#include "harnesses.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dtrain::fuzz::checkpoint(data, size);
  return 0;
}
