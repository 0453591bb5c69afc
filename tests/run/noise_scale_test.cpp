// The noise-scale estimator on a problem whose answer is known in closed
// form: linear least squares, loss(x, y) = (w.x - y)^2 / 2 with x ~ N(0, I_d)
// and y = w*.x + e, e ~ N(0, s^2). At weights w, with d = w - w*, a sample's
// gradient is (d.x - e) x, so
//   G         = E[(d.x - e) x] = d                        |G|^2 = |d|^2
//   E[g g^T]  = (|d|^2 + s^2) I + 2 d d^T   (Isserlis)
//   Sigma     = (|d|^2 + s^2) I + d d^T     tr(Sigma) = d (|d|^2 + s^2) + |d|^2
// Fresh samples every step, drawn as the trainer draws them: W x k
// micro-batches per global batch.
#include "run/noise_scale.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

namespace dtrain {
namespace {

struct LeastSquares {
  int64_t dims = 20;
  double noise_std = 0.5;
  torch::Tensor offset;  // d = w - w*

  LeastSquares() {
    torch::manual_seed(1);
    offset = torch::randn({dims}, torch::kDouble);
    offset /= offset.norm();  // |d|^2 = 1
  }
  double grad_sq() const { return offset.square().sum().item<double>(); }
  double trace() const { return static_cast<double>(dims) * (grad_sq() + noise_std * noise_std) + grad_sq(); }

  // Per-sample gradients of `count` fresh samples, [count, dims].
  torch::Tensor sample_gradients(int64_t count) const {
    const auto x = torch::randn({count, dims}, torch::kDouble);
    const auto e = torch::randn({count, 1}, torch::kDouble) * noise_std;
    return (x.matmul(offset).unsqueeze(1) - e) * x;
  }

  // One step: `micro_batches` micro-batches of `micro` samples.
  NoiseSample step(int64_t micro, int64_t micro_batches) const {
    const auto grads = sample_gradients(micro * micro_batches).view({micro_batches, micro, dims});
    NoiseSample sample;
    sample.small_sq_norm = grads.mean(1).square().sum(1).mean().item<double>();
    sample.big_sq_norm = grads.reshape({-1, dims}).mean(0).square().sum().item<double>();
    sample.small_batch = micro;
    sample.big_batch = micro * micro_batches;
    return sample;
  }
};

TEST(NoiseScale, EstimatesMatchTheClosedFormOfLeastSquares) {
  const LeastSquares problem;
  ASSERT_NEAR(problem.trace() / problem.grad_sq(), 26.0, 1e-9);  // B_simple = 20 x 1.25 + 1
  torch::manual_seed(2);
  // Small and large batches around B_simple, with and without accumulation.
  const std::pair<int64_t, int64_t> splits[] = {{8, 4}, {16, 8}, {4, 64}};
  for (const auto& [micro, micro_batches] : splits) {
    SCOPED_TRACE("micro " + std::to_string(micro) + " x " + std::to_string(micro_batches));
    std::vector<NoiseEstimate> estimates;
    NoiseScaleAverage average(0.99);
    for (int step = 0; step < 4000; ++step) {
      estimates.push_back(unbiased_estimate(problem.step(micro, micro_batches)));
      average.add(estimates.back());
    }
    const NoiseScaleMeasurement m = measure_noise_scale(estimates);
    EXPECT_NEAR(m.grad_sq, problem.grad_sq(), 0.1 * problem.grad_sq());
    EXPECT_NEAR(m.trace, problem.trace(), 0.1 * problem.trace());
    EXPECT_NEAR(m.b_simple, 26.0, 2.6);
    EXPECT_LT(m.high - m.low, 0.3 * 26.0);  // not vacuous
    // The online average (about the last 100 steps) lands near it too.
    EXPECT_NEAR(average.b_simple(), 26.0, 0.35 * 26.0);
  }
}

TEST(NoiseScale, IntervalCoversTheTruthAboutNineteenTimesInTwenty) {
  const LeastSquares problem;
  torch::manual_seed(4);
  constexpr int kMeasurements = 80;
  int covered = 0;
  for (int i = 0; i < kMeasurements; ++i) {
    std::vector<NoiseEstimate> estimates;
    for (int step = 0; step < 200; ++step) estimates.push_back(unbiased_estimate(problem.step(8, 8)));
    const NoiseScaleMeasurement m = measure_noise_scale(estimates);
    covered += m.low < 26.0 && 26.0 < m.high ? 1 : 0;
  }
  // Binomial(80, 0.95): 76 expected; 68 is more than four deviations below.
  EXPECT_GE(covered, 68);
  EXPECT_LE(covered, kMeasurements);
  std::printf("95%% interval covered the true B_simple in %d of %d measurements\n", covered, kMeasurements);
}

TEST(NoiseScale, RawNormsAloneWouldBeBiased) {
  // Why the estimator exists: |G_B|^2 overstates |G|^2 by tr(Sigma)/B.
  const LeastSquares problem;
  torch::manual_seed(3);
  double big = 0;
  for (int step = 0; step < 2000; ++step) big += problem.step(8, 4).big_sq_norm / 2000;
  EXPECT_NEAR(big, problem.grad_sq() + problem.trace() / 32, 0.1 * (problem.grad_sq() + problem.trace() / 32));
  EXPECT_GT(big, 1.5 * problem.grad_sq());
}

TEST(NoiseScale, UnbiasedEstimateSolvesTheTwoBatchEquations) {
  // E|G_B|^2 = |G|^2 + tr/B at both sizes: exact inputs give exact outputs.
  const double grad_sq = 2, trace = 300;
  NoiseSample sample;
  sample.small_batch = 10;
  sample.big_batch = 40;
  sample.small_sq_norm = grad_sq + trace / 10;
  sample.big_sq_norm = grad_sq + trace / 40;
  const NoiseEstimate e = unbiased_estimate(sample);
  EXPECT_NEAR(e.grad_sq, grad_sq, 1e-12);
  EXPECT_NEAR(e.trace, trace, 1e-9);
  sample.big_batch = 10;
  EXPECT_ANY_THROW(unbiased_estimate(sample));
}

TEST(NoiseScale, AverageIsBiasCorrectedAndResumesExactly) {
  NoiseScaleAverage average(0.9);
  EXPECT_TRUE(average.empty());
  average.add({2.0, 50.0});
  // One value: the corrected average is that value, not 10% of it.
  EXPECT_DOUBLE_EQ(average.grad_sq(), 2.0);
  EXPECT_DOUBLE_EQ(average.b_simple(), 25.0);
  average.add({4.0, 50.0});
  EXPECT_NEAR(average.grad_sq(), (0.9 * 0.1 * 2 + 0.1 * 4) / (1 - 0.81), 1e-12);
  NoiseScaleAverage resumed(0.9);
  resumed.restore(average.state());
  resumed.add({3.0, 70.0});
  average.add({3.0, 70.0});
  EXPECT_EQ(resumed.b_simple(), average.b_simple());
  NoiseScaleAverage other_decay(0.5);
  other_decay.restore(average.state());
  EXPECT_TRUE(other_decay.empty());
}

}  // namespace
}  // namespace dtrain
