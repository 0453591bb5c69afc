// libFuzzer harness: the weight loader (--init-from) on any bytes: dtrain's
// zip layout check, then LibTorch's zip reader and unpickler. A dict of
// tensors or one clean dtrain::Error. Inputs that crash inside LibTorch 1.13
// itself are listed in docs/reliability.md; none is skipped here.
#include "common/error.h"
#include "fuzz_check.h"
#include "io/weights.h"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    dtrain::parse_weights(data, size, "fuzz.pt");
  } catch (const dtrain::Error& e) {
    dtrain::fuzz::check_message(e.what());
  }
  return 0;
}
