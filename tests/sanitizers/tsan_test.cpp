// ThreadSanitizer, as launch/test.sh --tsan runs it, still sees a race in
// dtrain's own code on a tensor's memory: its options
// (ignore_noninstrumented_modules) and tests/sanitizers/tsan.supp silence
// only uninstrumented libraries. The race is the one the non-finite check
// must never meet: a gradient written while FiniteCheck's helper reads it.
// Runs in the TSan build only.
#include "ddp/finite_check.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <unistd.h>

// GCC defines the first, clang has the feature test.
#if defined(__SANITIZE_THREAD__)
#define DTRAIN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DTRAIN_TSAN 1
#endif
#endif

namespace dtrain {
namespace {

// Submits a gradient, lets the helper take it, then writes it before
// all_finite() has synchronized with the helper. Small, so that TSan's
// history still holds the helper's reads (and names its stack).
void write_a_gradient_under_check() {
  const torch::Tensor gradient = torch::ones({4096});
  float* data = gradient.data_ptr<float>();
  FiniteCheck check;
  check.submit(data, gradient.numel());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (int64_t i = 0; i < gradient.numel(); ++i) data[i] = 2.0f;
  check.all_finite();
  _exit(0);
}

class ThreadSanitizer : public ::testing::Test {
 protected:
  // A fresh process for the child (the parent has threads, and TSan forbids
  // new ones after such a fork).
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(ThreadSanitizer, ReportsAGradientWrittenWhileTheHelperChecksIt) {
#if !defined(DTRAIN_TSAN)
  // launch/test.sh --tsan sets DTRAIN_EXPECT_TSAN: a build there without
  // TSan fails here rather than passing unchecked.
  if (std::getenv("DTRAIN_EXPECT_TSAN") != nullptr) FAIL() << "launch/test.sh --tsan ran a build without -fsanitize=thread";
  GTEST_SKIP() << "runs in the ThreadSanitizer build (launch/test.sh --tsan)";
#endif
  // TSan exits 66 on a report; the report must name dtrain's own kernel,
  // not a frame inside a library.
  EXPECT_EXIT(write_a_gradient_under_check(), ::testing::ExitedWithCode(66),
              "WARNING: ThreadSanitizer: data race.*floats_all_finite");
}

}  // namespace
}  // namespace dtrain

#undef DTRAIN_TSAN
