// libFuzzer harness: the IDX reader (gzip included) on any bytes. The first
// byte picks the rank the caller expects (1: labels, 3: images). A result or
// one clean dtrain::Error; anything else (a crash, another exception, a
// claimed size allocated before its data exists) is a finding.
#include "common/error.h"
#include "data/idx_reader.h"
#include "fuzz_check.h"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int rank = (data[0] & 1) ? 3 : 1;
  try {
    const dtrain::IdxArray array = dtrain::parse_idx(data + 1, size - 1, "fuzz.idx", rank);
    size_t total = 1;
    for (int64_t dim : array.dims) total *= static_cast<size_t>(dim);
    if (total != array.data.size()) __builtin_trap();  // the reader's own promise
  } catch (const dtrain::Error& e) {
    dtrain::fuzz::check_message(e.what());
  }
  return 0;
}
