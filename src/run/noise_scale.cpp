// The noise scale's estimator, its averages and the measurement at fixed
// weights; observe_noise reads one step's sample from the reducer.
#include "run/noise_scale.h"

#include "comm/communicator.h"
#include "comm/watchdog.h"
#include "common/error.h"
#include "ddp/reducer.h"

#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>

namespace dtrain {

NoiseEstimate unbiased_estimate(const NoiseSample& sample) {
  const double small = static_cast<double>(sample.small_batch);
  const double big = static_cast<double>(sample.big_batch);
  if (!(big > small && small > 0)) throw Error("the noise scale needs a global batch larger than the micro-batch");
  NoiseEstimate estimate;
  estimate.grad_sq = (big * sample.big_sq_norm - small * sample.small_sq_norm) / (big - small);
  estimate.trace = (sample.small_sq_norm - sample.big_sq_norm) / (1 / small - 1 / big);
  return estimate;
}

void NoiseScaleAverage::add(const NoiseEstimate& estimate) {
  grad_sq_ema_ = decay_ * grad_sq_ema_ + (1 - decay_) * estimate.grad_sq;
  trace_ema_ = decay_ * trace_ema_ + (1 - decay_) * estimate.trace;
  ++count_;
}

std::optional<double> NoiseScaleAverage::valid_b_simple() const {
  if (empty() || grad_sq() <= 0 || trace() <= 0 || !std::isfinite(b_simple())) return std::nullopt;
  return b_simple();
}

double NoiseScaleAverage::grad_sq() const {
  return count_ == 0 ? NAN : grad_sq_ema_ / (1 - std::pow(decay_, static_cast<double>(count_)));
}

double NoiseScaleAverage::trace() const {
  return count_ == 0 ? NAN : trace_ema_ / (1 - std::pow(decay_, static_cast<double>(count_)));
}

nlohmann::json NoiseScaleAverage::state() const {
  return {{"decay", decay_}, {"grad_sq_ema", grad_sq_ema_}, {"trace_ema", trace_ema_}, {"count", count_}};
}

void NoiseScaleAverage::restore(const nlohmann::json& state) {
  // Another --noise-scale-ema starts afresh rather than mixing two averages.
  if (state.is_null() || state.at("decay").get<double>() != decay_) return;
  grad_sq_ema_ = state.at("grad_sq_ema").get<double>();
  trace_ema_ = state.at("trace_ema").get<double>();
  count_ = state.at("count").get<int64_t>();
}

NoiseScaleMeasurement measure_noise_scale(const std::vector<NoiseEstimate>& estimates) {
  NoiseScaleMeasurement result;
  result.steps = static_cast<int64_t>(estimates.size());
  const double n = static_cast<double>(estimates.size());
  if (estimates.empty()) return result;
  for (const auto& e : estimates) {
    result.grad_sq += e.grad_sq / n;
    result.trace += e.trace / n;
  }
  result.b_simple = result.trace / result.grad_sq;
  if (estimates.size() < 2) {
    result.low = result.high = NAN;
    return result;
  }
  double var_g = 0, var_t = 0, cov = 0;
  for (const auto& e : estimates) {
    var_g += (e.grad_sq - result.grad_sq) * (e.grad_sq - result.grad_sq) / (n - 1);
    var_t += (e.trace - result.trace) * (e.trace - result.trace) / (n - 1);
    cov += (e.grad_sq - result.grad_sq) * (e.trace - result.trace) / (n - 1);
  }
  // Var(T/G) ~ (var_t/G^2 - 2 T cov/G^3 + T^2 var_g/G^4) / n for the means T, G.
  const double g = result.grad_sq;
  const double t = result.trace;
  const double variance = (var_t / (g * g) - 2 * t * cov / (g * g * g) + t * t * var_g / (g * g * g * g)) / n;
  const double half_width = 1.959963984540054 * std::sqrt(std::max(variance, 0.0));
  result.low = result.b_simple - half_width;
  result.high = result.b_simple + half_width;
  return result;
}

NoiseSample observe_noise(const GradientReducer& reducer, Communicator& comm, const BatchPlan& plan,
                          double big_grad_norm) {
  // Each micro-batch's raw gradient is (1/global) x its samples' gradient sum:
  // global/micro times its per-sample mean.
  at::Tensor local = reducer.micro_batch_sq_norm_sum();
  {
    CollectiveWatchdog::Scope watched(comm.watchdog(), "noise-scale all-reduce");
    comm.all_reduce(local);
  }
  const double micro_batches = static_cast<double>(plan.world_size * plan.grad_accum_steps);
  const double rescale = static_cast<double>(plan.global_batch_size) / static_cast<double>(plan.micro_batch_size);
  NoiseSample sample;
  sample.small_sq_norm = local.item<double>() / micro_batches * rescale * rescale;
  sample.big_sq_norm = big_grad_norm * big_grad_norm;
  sample.small_batch = plan.micro_batch_size;
  sample.big_batch = plan.global_batch_size;
  return sample;
}

void check_noise_scale_split(const BatchPlan& plan, bool chosen_by_auto) {
  if (plan.world_size * plan.grad_accum_steps >= 2) return;
  const std::string why = "the noise scale compares micro-batch gradients with the global batch's, and ";
  if (chosen_by_auto) {
    throw UsageError(why + "--micro-batch-size auto chose " + plan.describe() +
                     ", one micro-batch per step; use 2+ ranks or a larger --global-batch-size");
  }
  throw UsageError(why + plan.describe() + " has one micro-batch per step; use 2+ ranks or --grad-accum-steps 2+");
}

}  // namespace dtrain
