// Trainer <-> memory: the breakdown of what a step holds, and
// --micro-batch-size auto's probes of a micro-step (the search itself is
// memory/memory.h's largest_fitting_micro_batch).
#include "common/error.h"
#include "data/sampler.h"
#include "ddp/reducer.h"
#include "optim/optimizer.h"
#include "run/checkpoint.h"
#include "run/updater.h"
#include "train/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>

namespace dtrain {

namespace {

// Optimizer state a first update creates, per byte of parameters (LibTorch
// creates it lazily): momentum buffers, or Adam's two moments.
double optimizer_state_per_parameter_byte(const OptimizerOptions& options) {
  switch (options.kind) {
    case OptimizerKind::Sgd: return options.momentum > 0 ? 1 : 0;
    case OptimizerKind::Lars: return 1;
    case OptimizerKind::AdamW:
    case OptimizerKind::Lamb: return 2;
  }
  return 2;
}

int64_t parameter_bytes(const torch::nn::Module& model) {
  return tensor_bytes(trainable_parameters(model));  // a tied weight once
}

std::string describe_probe(const ProbedSize& probed) {
  return std::to_string(probed.micro) + ": " +
         (probed.peak ? format_bytes(*probed.peak) + (probed.fits ? " fits" : " too big") : std::string("out of memory"));
}

}  // namespace

int64_t Trainer::optimizer_state_bytes() const {
  return updater_->local_state_bytes();
}

MemoryBreakdown Trainer::memory_breakdown() const {
  return memory_.breakdown(parameter_bytes(*model_), reducer_->buffer_bytes());
}

std::optional<int64_t> Trainer::probe_micro_step(int64_t micro) {
  const BatchPlan probe = plan_.with_micro_batch(micro);
  // The first step's epoch order, made once for every probe and kept for it.
  const std::vector<int64_t>& permutation = order_.of_epoch(start_step_ / length_.steps_per_epoch);
  const auto indices = micro_batch_indices(permutation, probe, start_step_ % length_.steps_per_epoch, 0, comm_.rank());
  // Nothing the probe does may reach the trajectory: the RNG states go back,
  // the gradients are zeroed, and there is no update.
  std::vector<std::pair<at::Generator, at::Tensor>> generators;
  for (auto& generator : rng_generators(device_)) generators.emplace_back(generator, generator.get_state());
  model_->train();
  reducer_->zero_grad();
  memory_.begin_step();
  std::optional<int64_t> peak;
  try {
    const BudgetScope budget;
    reducer_->begin_micro_step(false);  // accumulates locally: no communication
    summed_train_loss(indices).backward();
    peak = peak_memory_bytes(device_);
  } catch (const c10::OutOfMemoryError&) {
    release_cached_memory(device_);
  }
  reducer_->zero_grad();
  for (auto& [generator, state] : generators) {
    generator.set_state(state);
    if (peak && state.device() == device_) *peak -= tensor_bytes({state});  // the saved state: the probe's, not a step's
  }
  // --noise-scale measures each micro-batch's gradient: with accumulation a
  // copy of the buckets stays, and each measurement takes a temporary of at
  // most the buckets' size (an upper bound; the probe measures nothing).
  if (peak && noise_) *peak += (probe.grad_accum_steps > 1 ? reducer_->bytes() : 0) + reducer_->bytes();
  if (peak && !memory_.stepped() && !updater_->has_state()) {
    // Sharded: this rank's pieces only, about 1/world of the parameters.
    int64_t state_of = parameter_bytes(*model_);
    if (reducer_->sharded()) {
      state_of = 0;
      for (const auto& piece : reducer_->owned_pieces()) state_of += tensor_bytes({piece.value});
    }
    *peak += static_cast<int64_t>(optimizer_state_per_parameter_byte(config_.optimizer) * static_cast<double>(state_of));
  }
  return peak;
}

int64_t Trainer::largest_fitting_micro_batch() {
  int64_t budget = config_.batch.memory_budget;
  if (!memory_.measures()) {
    throw UsageError("--micro-batch-size auto measures memory, and nothing measures it on " + device_.str() +
                     " in this build; give --micro-batch-size N");
  }
  if (budget == 0) {
    if (!device_.is_cuda()) {
      throw UsageError(
          "--micro-batch-size auto on CPU needs --memory-budget SIZE (e.g. --memory-budget 2GiB): a CPU has no fixed "
          "memory to fill");
    }
    const int64_t usable = free_device_memory_bytes(device_).value_or(0) + allocated_memory_bytes(device_).value_or(0);
    budget = usable - usable / 10;  // a margin for the allocator's fragments and what NCCL takes
  }
  auto_search_ = dtrain::largest_fitting_micro_batch(plan_.local_batch_size(), budget,
                                                     [this](int64_t micro) { return probe_micro_step(micro); });
  return auto_search_.micro;
}

void Trainer::use_micro_batch(const std::vector<int64_t>& choices) {
  // Every rank the same micro-batch: the smallest choice.
  const auto smallest = std::min_element(choices.begin(), choices.end());
  const int64_t micro = *smallest;
  const int limiting_rank = static_cast<int>(smallest - choices.begin());
  std::string tried;
  for (const auto& probed : auto_search_.tried) tried += (tried.empty() ? "" : ", ") + describe_probe(probed);
  if (micro == 0) {
    throw Error("--micro-batch-size auto: not even a micro-batch of 1 fits the memory budget of " +
                format_bytes(auto_search_.budget) + " on rank " + std::to_string(limiting_rank) +
                (limiting_rank == comm_.rank() ? " (tried " + tried + ")" : std::string()) +
                "; raise --memory-budget or use a smaller model");
  }
  plan_ = plan_.with_micro_batch(micro);
  if (noise_) check_noise_scale_split(plan_, /*chosen_by_auto=*/true);
  if (is_root()) {
    std::fprintf(stdout, "micro-batch auto (budget %s per rank): tried %s; chose %lld%s: %s\n",
                 format_bytes(auto_search_.budget).c_str(), tried.c_str(), static_cast<long long>(micro),
                 micro != auto_search_.micro ? (" (rank " + std::to_string(limiting_rank) + "'s largest)").c_str() : "",
                 plan_.describe().c_str());
    std::fflush(stdout);
  }
}

}  // namespace dtrain
