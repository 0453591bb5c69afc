// How a test skips when what it needs is missing. Two kinds:
//   - a prerequisite CI installs (Debian's python3-torch for the PyTorch
//     comparisons, the bible command for the KJV corpus): outside CI a skip,
//     but under CI=true a failure, since there a skip would leave CI green
//     with the check never run;
//   - a GPU (and NCCL): CI's machine has none, so there the skip is expected
//     and stays a skip; its message says so (tests/gpu/kit.sh runs these
//     tests on a GPU machine).
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace dtrain::testing {

inline bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::strcmp(ci, "true") == 0;
}

inline constexpr const char* kNoGpuSkip =
    "needs NCCL in the build and one GPU per rank; a skip CI is known to need (its machine has no GPU; "
    "tests/gpu/kit.sh runs these on one)";

}  // namespace dtrain::testing

// Skips the current test (returns from the enclosing void function: a TEST
// body or SetUp) because `why` is missing; under CI=true fails it instead,
// with one line saying why.
#define DTRAIN_SKIP_OUTSIDE_CI(why)                                                                      \
  do {                                                                                                   \
    const std::string dtrain_skip_why_ = (why);                                                          \
    if (::dtrain::testing::running_in_ci()) {                                                            \
      GTEST_FAIL() << "CI=true, where a skip would hide this check, so it fails: " << dtrain_skip_why_; \
    }                                                                                                    \
    GTEST_SKIP() << dtrain_skip_why_;                                                                    \
  } while (false)
