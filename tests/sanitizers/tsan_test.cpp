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
#include <thread>
#include <unistd.h>

namespace dtrain {
namespace {

// Submits a gradient, lets the helper take its pieces, then writes it
// before all_finite() has synchronized with the helper.
void write_a_gradient_under_check() {
  const torch::Tensor gradient = torch::ones({1 << 20});
  float* data = gradient.data_ptr<float>();
  FiniteCheck check;
  check.submit(data, gradient.numel());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (int64_t i = 0; i < gradient.numel(); ++i) data[i] = 2.0f;
  check.all_finite();
  _exit(0);
}

TEST(ThreadSanitizer, ReportsAGradientWrittenWhileTheHelperChecksIt) {
#if !defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "runs in the ThreadSanitizer build (launch/test.sh --tsan)";
#endif
  // A fresh process (the parent has threads; TSan forbids new ones after
  // such a fork); TSan exits 66 on a report.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(write_a_gradient_under_check(), ::testing::ExitedWithCode(66),
              "WARNING: ThreadSanitizer: data race");
}

}  // namespace
}  // namespace dtrain
