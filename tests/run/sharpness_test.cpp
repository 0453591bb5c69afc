// Sharpness by power iteration on Hessian-vector products (run/sharpness.h)
// on losses whose Hessian is known: the estimate, its sign, the stopping rule
// and the portable start vector.
#include "comm/communicator.h"
#include "run/sharpness.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>

namespace dtrain {
namespace {

// A quadratic loss 1/2 sum_i w^T A_i w over `samples` samples whose mean
// Hessian is A = Q diag(eigenvalues) Q^T, split over two parameters.
struct Quadratic {
  Quadratic(const std::vector<double>& eigenvalues, int64_t samples) {
    torch::manual_seed(7);
    const int64_t n = static_cast<int64_t>(eigenvalues.size());
    const auto q = std::get<0>(torch::linalg_qr(torch::randn({n, n}, torch::kDouble)));
    const auto a = q.matmul(torch::diag(torch::tensor(eigenvalues, torch::kDouble))).matmul(q.t());
    // Sample i's A_i = A + (i - (samples-1)/2) E with E symmetric: the mean is A.
    const auto e = torch::randn({n, n}, torch::kDouble);
    for (int64_t i = 0; i < samples; ++i) {
      per_sample.push_back((a + (static_cast<double>(i) - (samples - 1) / 2.0) * (e + e.t())).to(torch::kFloat));
    }
    first = torch::randn({n / 2}).requires_grad_(true);
    second = torch::randn({n - n / 2}).requires_grad_(true);
  }
  at::Tensor summed_loss(const std::vector<int64_t>& indices) const {
    const auto w = torch::cat({first, second});
    at::Tensor total = torch::zeros({});
    for (const int64_t i : indices) total = total + 0.5 * w.dot(per_sample[i].mv(w));
    return total;
  }
  std::vector<at::Tensor> parameters() const { return {first, second}; }
  std::vector<at::Tensor> per_sample;
  at::Tensor first, second;
};

SharpnessResult measure(const Quadratic& quadratic, int64_t samples, int64_t block, int64_t iterations,
                        double tolerance) {
  LocalCommunicator local;
  SharpnessOptions options;
  options.samples = samples;
  options.block = block;
  options.max_iterations = iterations;
  options.tolerance = tolerance;
  return top_hessian_eigenvalue(
      quadratic.parameters(), [&](const std::vector<int64_t>& indices) { return quadratic.summed_loss(indices); },
      static_cast<double>(samples), local, options);
}

TEST(Sharpness, FindsTheTopEigenvalueOfAKnownHessian) {
  const Quadratic quadratic({9.0, 4.0, 1.0, 0.5, -2.0, 0.1}, 10);
  const SharpnessResult result = measure(quadratic, 10, 3, 500, 1e-6);
  EXPECT_TRUE(result.converged);
  EXPECT_NEAR(result.top_eigenvalue, 9.0, 1e-4);
  EXPECT_EQ(static_cast<int64_t>(result.estimates.size()), result.iterations);
}

TEST(Sharpness, KeepsTheSignOfANegativeTopEigenvalue) {
  const Quadratic quadratic({3.0, 1.0, -6.0, 0.5}, 4);
  const SharpnessResult result = measure(quadratic, 4, 4, 500, 1e-6);
  EXPECT_NEAR(result.top_eigenvalue, -6.0, 1e-4);
}

TEST(Sharpness, BlocksDoNotChangeTheEstimate) {
  const Quadratic quadratic({5.0, 2.0, 1.0, -1.0}, 12);
  const double whole = measure(quadratic, 12, 12, 30, 0).top_eigenvalue;
  for (const int64_t block : {1, 5, 7}) {
    EXPECT_NEAR(measure(quadratic, 12, block, 30, 0).top_eigenvalue, whole, 1e-5 * std::abs(whole)) << block;
  }
}

TEST(Sharpness, StopsAtTheToleranceOrTheIterationLimitAndSaysWhich) {
  // Eigenvalues 1 and 0.999: power iteration barely separates them.
  const Quadratic close({1.0, 0.999, 0.5, 0.2}, 2);
  const SharpnessResult limited = measure(close, 2, 2, 5, 0);
  EXPECT_FALSE(limited.converged);
  EXPECT_EQ(limited.iterations, 5);
  EXPECT_EQ(sharpness_json(limited, SharpnessOptions{2, 2, 5, 0})["stopped"], "max iterations");
  const Quadratic apart({10.0, 1.0, 0.5, 0.2}, 2);
  const SharpnessResult converged = measure(apart, 2, 2, 100, 1e-3);
  EXPECT_TRUE(converged.converged);
  EXPECT_LT(converged.iterations, 100);
  EXPECT_LT(converged.relative_change, 1e-3);
  const auto json = sharpness_json(converged, SharpnessOptions{2, 2, 100, 1e-3});
  EXPECT_EQ(json["stopped"], "converged");
  EXPECT_EQ(json["top_eigenvalue"].get<double>(), converged.top_eigenvalue);
}

TEST(Sharpness, TheStartVectorIsPortable) {
  // Knuth's multiplicative hash of each flat index, normalized: the values a
  // reference in any language computes.
  const std::vector<at::Tensor> shapes = {torch::zeros({2, 3}), torch::zeros({4})};
  const auto v = sharpness_start_vector(shapes);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].sizes(), shapes[0].sizes());
  std::vector<double> raw;
  for (int64_t j = 0; j < 10; ++j) {
    raw.push_back(static_cast<double>(((j + 1) * 2654435761LL) % (1LL << 32)) / 4294967296.0 - 0.5);
  }
  double norm = 0;
  for (const double x : raw) norm += x * x;
  norm = std::sqrt(norm);
  const auto flat = torch::cat({v[0].reshape({-1}), v[1]}).to(torch::kDouble);
  for (int64_t j = 0; j < 10; ++j) EXPECT_NEAR(flat[j].item<double>(), raw[j] / norm, 1e-7) << j;
}

}  // namespace
}  // namespace dtrain
