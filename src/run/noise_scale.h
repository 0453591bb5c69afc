// The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al.
// 2018, "An Empirical Model of Large-Batch Training", Appendix A): the batch
// size at which the gradient's noise and signal are of one size, an estimate
// of the critical batch.
//
// Each optimizer step measures the gradient at two batch sizes for the price
// of one scalar all-reduce: every micro-batch's own gradient (B_small = the
// micro-batch; the reducer sums their squared norms before communicating,
// ddp/reducer.h) and the all-reduced gradient (B_big = the global batch).
// Both are per-sample MEAN gradients: the loss is summed and divided by the
// global batch (train/trainer.h), so a micro-batch's raw gradient is rescaled
// by global/micro. Since E|G_B|^2 = |G|^2 + tr(Sigma)/B, two batch sizes give
// unbiased estimates of both (unbiased_estimate); their ratio is not, so the
// trainer keeps bias-corrected moving averages of each and divides those.
#pragma once
#include "data/batch_plan.h"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <vector>

namespace dtrain {

class Communicator;
class GradientReducer;

// One step's squared norms of per-sample mean gradients.
struct NoiseSample {
  double small_sq_norm = 0;  // |G_small|^2, averaged over the step's W x k micro-batches
  double big_sq_norm = 0;    // |G_big|^2 of the all-reduced gradient
  int64_t small_batch = 0;   // B_small: the micro-batch
  int64_t big_batch = 0;     // B_big: the global batch
};

// Unbiased estimates of |G|^2 and tr(Sigma) from one sample (either may come
// out negative on a noisy step; averages of them are what to divide):
//   |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
//   tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
struct NoiseEstimate {
  double grad_sq = 0;
  double trace = 0;
};
NoiseEstimate unbiased_estimate(const NoiseSample& sample);

// Bias-corrected exponential moving averages of both estimates (Adam's
// correction: divided by 1 - decay^count), and their ratio.
class NoiseScaleAverage {
 public:
  explicit NoiseScaleAverage(double decay) : decay_(decay) {}
  void add(const NoiseEstimate& estimate);
  bool empty() const { return count_ == 0; }
  double grad_sq() const;
  double trace() const;
  double b_simple() const { return trace() / grad_sq(); }
  // B_simple where it means something: averages present, both positive (early
  // estimates may be negative), the ratio finite; nullopt otherwise.
  std::optional<double> valid_b_simple() const;
  // For checkpoints: a resumed run continues the averages exactly.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

 private:
  double decay_;
  double grad_sq_ema_ = 0;
  double trace_ema_ = 0;
  int64_t count_ = 0;
};

// B_simple at fixed weights from many steps' estimates: the ratio of the
// means, with a 95% interval from the delta method (the steps' batches are
// independent draws).
struct NoiseScaleMeasurement {
  double b_simple = 0;
  double low = 0;
  double high = 0;
  double grad_sq = 0;  // mean estimate of |G|^2
  double trace = 0;    // mean estimate of tr(Sigma)
  int64_t steps = 0;
};
NoiseScaleMeasurement measure_noise_scale(const std::vector<NoiseEstimate>& estimates);

// The noise scale compares micro-batch gradients with the global batch's: a
// split needs two micro-batches per step at least. Throws UsageError naming
// the fix (`chosen_by_auto`: the split --micro-batch-size auto chose).
void check_noise_scale_split(const BatchPlan& plan, bool chosen_by_auto);

// The trainer's side: one step's sample from the reducer (its micro-batch
// norms, after finish()) and the all-reduced gradient's norm. Collective: one
// scalar all-reduce of the micro-batch norms.
NoiseSample observe_noise(const GradientReducer& reducer, Communicator& comm, const BatchPlan& plan,
                          double big_grad_norm);

}  // namespace dtrain
