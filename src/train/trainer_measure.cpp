// Measurements at fixed weights, outside the training loop: the gradient
// noise scale over a number of global batches (--measure-noise-scale) and the
// sharpness of the training loss (--measure-sharpness, --sharpness-at-end).
#include "train/trainer.h"

#include "common/error.h"
#include "models/gpt.h"
#include "run/sharpness.h"

#include <torch/torch.h>

#include <cstdio>

namespace dtrain {

RunOutcome Trainer::measure_noise_scale(int64_t steps) {
  time_.start = Throughput::Clock::now();
  if (is_root()) {
    std::fprintf(stdout, "measuring the gradient noise scale at step %lld's weights over %lld global batches of %s\n",
                 static_cast<long long>(start_step_), static_cast<long long>(steps), plan_.describe().c_str());
    std::fflush(stdout);
  }
  std::vector<NoiseEstimate> estimates;
  for (int64_t step = start_step_; step < start_step_ + steps; ++step) {
    const StepResult result = train_step(step, /*compute_grad_norm=*/true, /*update=*/false);
    if (result.verdict != StepVerdict::Update) {
      throw Error("the gradient at step " + std::to_string(step + 1) + " is not finite: these weights cannot be measured");
    }
    estimates.push_back(result.noise);
  }
  const NoiseScaleMeasurement m = dtrain::measure_noise_scale(estimates);
  if (is_root()) {
    std::fprintf(stdout, "B_simple = %.1f (95%% interval %.1f to %.1f) from %lld batches: |G|^2 %.4g, tr(Sigma) %.4g\n",
                 m.b_simple, m.low, m.high, static_cast<long long>(m.steps), m.grad_sq, m.trace);
    std::fflush(stdout);
  }
  auto finite = [](double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr); };
  nlohmann::json summary = {{"status", to_string(RunStatus::Measured)},
                            {"steps", start_step_},
                            {"noise_scale", {{"b_simple", finite(m.b_simple)},
                                             {"ci95", {finite(m.low), finite(m.high)}},
                                             {"grad_sq", m.grad_sq},
                                             {"trace", m.trace},
                                             {"batches", m.steps}}},
                            {"wall_seconds", time_.elapsed()}};
  plan_.add_to(summary);
  return {RunStatus::Measured, summary};
}

nlohmann::json Trainer::measure_sharpness(int64_t samples) {
  if (samples > data_.train.size()) {
    throw UsageError("sharpness over " + std::to_string(samples) + " training samples: the training split has " +
                     std::to_string(data_.train.size()) + "; give at most that");
  }
  // No double backward through fused attention or a recomputed block: the
  // explicit path, whole graphs, fp32 (no autocast scope below).
  struct DoubleBackwardMode {
    DoubleBackwardMode(Model& model) : model(model), gpt(dynamic_cast<Gpt*>(&model)) {
      if (gpt) {
        kernel = gpt->attention_kernel();
        checkpointing = gpt->activation_checkpointing();
        gpt->set_attention_kernel(AttentionKernel::Explicit);
        gpt->set_activation_checkpointing(false);
      }
      model.eval();
    }
    ~DoubleBackwardMode() {
      if (gpt) {
        gpt->set_attention_kernel(kernel);
        gpt->set_activation_checkpointing(checkpointing);
      }
      model.train();
    }
    Model& model;
    Gpt* gpt;
    AttentionKernel kernel = AttentionKernel::Explicit;
    bool checkpointing = false;
  } mode(*model_);
  double loss_items = static_cast<double>(samples);
  if (data_.train.target_counts.defined()) {
    loss_items = static_cast<double>(data_.train.target_counts.narrow(0, 0, samples).sum().item<int64_t>());
  }
  auto block_loss = [&](const std::vector<int64_t>& indices) {
    const auto index = torch::tensor(indices, torch::kLong);
    const auto inputs = data_.train.inputs.index_select(0, index).to(device_);
    const auto targets = data_.train.targets.index_select(0, index).to(device_);
    return summed_cross_entropy(model_->forward(inputs), targets);
  };
  SharpnessOptions options;
  options.samples = samples;
  options.block = std::max<int64_t>(1, plan_.micro_batch_size);
  options.max_iterations = config_.study.sharpness_iterations;
  options.tolerance = config_.study.sharpness_tolerance;
  const SharpnessResult result =
      top_hessian_eigenvalue(trainable_parameters(*model_), block_loss, loss_items, comm_, options);
  if (is_root()) {
    std::fprintf(stdout, "%s\n", describe(result).c_str());
    std::fflush(stdout);
  }
  return sharpness_json(result, options);
}

}  // namespace dtrain
