// libFuzzer entry point of the option_values harness; the body is dtrain::fuzz::option_values
// (tests/fuzz/harnesses.h).
#include "harnesses.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dtrain::fuzz::option_values(data, size);
  return 0;
}
