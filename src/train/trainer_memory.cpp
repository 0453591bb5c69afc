// Trainer <-> memory: the breakdown of what a step holds, and
// --micro-batch-size auto's probes of a micro-step (the search itself is
// memory/memory.h's largest_fitting_micro_batch).
#include "common/error.h"
#include "data/sampler.h"
#include "ddp/reducer.h"
#include "models/gpt.h"
#include "optim/optimizer.h"
#include "run/checkpoint.h"
#include "run/updater.h"
#include "train/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <limits>
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
  const std::vector<int64_t>& permutation = order_.of_epoch(batch_.position().epoch);
  const auto indices = micro_batch_indices_at(permutation, probe, batch_.position().offset, 0, comm_.rank());
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

std::optional<double> Trainer::time_micro_step(int64_t micro, int repeats, bool warm_up) {
  // One untimed probe first: it grows the allocator's pools.
  if (warm_up && !probe_micro_step(micro)) return std::nullopt;
  std::vector<double> times;
  for (int repeat = 0; repeat < repeats; ++repeat) {
    const auto start = std::chrono::steady_clock::now();
    if (!probe_micro_step(micro)) return std::nullopt;
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  // The median: what a steady run sees on a shared machine, not its best.
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

bool Trainer::activation_checkpointing() const {
  const auto* gpt = dynamic_cast<const Gpt*>(model_.get());
  return gpt != nullptr && gpt->activation_checkpointing();
}

void Trainer::set_activation_checkpointing(bool on) {
  if (auto* gpt = dynamic_cast<Gpt*>(model_.get())) gpt->set_activation_checkpointing(on);
}

std::vector<int64_t> Trainer::largest_fitting_micro_batches() {
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
  // --activation-checkpointing auto on a model with blocks: both ways.
  const bool choose_checkpointing = config_.model.activation_checkpointing == ActivationCheckpointing::Auto &&
                                    dynamic_cast<Gpt*>(model_.get()) != nullptr;
  const std::vector<bool> ways = choose_checkpointing ? std::vector<bool>{false, true}
                                                      : std::vector<bool>{activation_checkpointing()};
  auto_.clear();
  std::vector<int64_t> largest;
  for (const bool checkpointing : ways) {
    set_activation_checkpointing(checkpointing);
    LeverCandidate candidate;
    candidate.checkpointing = checkpointing;
    candidate.search = dtrain::largest_fitting_micro_batch(plan_.local_batch_size(), budget,
                                                          [this](int64_t micro) { return probe_micro_step(micro); });
    largest.push_back(candidate.search.micro);
    auto_.push_back(std::move(candidate));
  }
  return largest;
}

std::vector<int64_t> Trainer::time_candidates(const std::vector<std::vector<int64_t>>& choices) {
  std::vector<int64_t> nanoseconds(auto_.size(), 0);
  for (size_t c = 0; c < auto_.size(); ++c) {
    auto_[c].micro = *std::min_element(choices.at(c).begin(), choices.at(c).end());
    if (auto_.size() < 2 || auto_[c].micro == 0) continue;
    // The faster of two probes: the first may still grow the allocator's pools.
    set_activation_checkpointing(auto_[c].checkpointing);
    int64_t best = std::numeric_limits<int64_t>::max();
    for (int repeat = 0; repeat < 2; ++repeat) {
      const auto start = std::chrono::steady_clock::now();
      auto_[c].peak = probe_micro_step(auto_[c].micro);
      best = std::min<int64_t>(best, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                         std::chrono::steady_clock::now() - start).count());
    }
    nanoseconds[c] = std::max<int64_t>(1, best);
  }
  return nanoseconds;
}

namespace {

// 31234.5 -> "31,235".
std::string with_thousands(double value) {
  std::string digits = std::to_string(std::llround(value));
  for (int at = static_cast<int>(digits.size()) - 3; at > 0; at -= 3) digits.insert(static_cast<size_t>(at), ",");
  return digits;
}

}  // namespace

void Trainer::use_micro_batch(const std::vector<std::vector<int64_t>>& choices,
                              const std::vector<std::vector<int64_t>>& nanoseconds) {
  // Each candidate at the smallest of the ranks' largest micro-batches, timed
  // by its slowest rank; the most samples per second wins.
  size_t chosen = 0;
  double best_rate = -1;
  for (size_t c = 0; c < auto_.size(); ++c) {
    auto_[c].seconds = 1e-9 * static_cast<double>(*std::max_element(nanoseconds.at(c).begin(), nanoseconds.at(c).end()));
    if (auto_[c].micro == 0) continue;
    const double rate = auto_[c].seconds > 0 ? static_cast<double>(auto_[c].micro) / auto_[c].seconds : 0;
    if (rate > best_rate) {
      best_rate = rate;
      chosen = c;
    }
  }
  const LeverCandidate pick = auto_[chosen];  // a copy: auto_ is reordered below
  const auto& ranks = choices.at(chosen);
  const int limiting_rank = static_cast<int>(std::min_element(ranks.begin(), ranks.end()) - ranks.begin());
  auto way = [&](const LeverCandidate& candidate) {
    return auto_.size() < 2 ? std::string() : candidate.checkpointing ? " with checkpointing" : " without checkpointing";
  };
  std::string tried;
  for (const auto& candidate : auto_) {
    tried += (tried.empty() ? "" : "; ") + (auto_.size() < 2 ? std::string() : way(candidate).substr(1) + " ");
    std::string sizes;
    for (const auto& probed : candidate.search.tried) sizes += (sizes.empty() ? "" : ", ") + describe_probe(probed);
    tried += "tried " + sizes;
  }
  if (best_rate < 0) {
    throw Error("--micro-batch-size auto: not even a micro-batch of 1 fits the memory budget of " +
                format_bytes(pick.search.budget) + " on rank " + std::to_string(limiting_rank) +
                (limiting_rank == comm_.rank() ? " (" + tried + ")" : std::string()) +
                "; raise --memory-budget or use a smaller model");
  }
  set_activation_checkpointing(pick.checkpointing);
  plan_ = plan_.with_micro_batch(pick.micro);
  if (noise_) check_noise_scale_split(plan_, /*chosen_by_auto=*/true);
  std::rotate(auto_.begin(), auto_.begin() + static_cast<std::ptrdiff_t>(chosen), auto_.begin() + static_cast<std::ptrdiff_t>(chosen) + 1);
  if (!is_root()) return;
  std::string timed;
  if (auto_.size() > 1) {
    for (const auto& candidate : auto_) {
      timed += "; micro " + std::to_string(candidate.micro) + way(candidate);
      if (candidate.micro == 0) {
        timed += ": nothing fits";
        continue;
      }
      timed += ": " + (candidate.peak ? format_bytes(*candidate.peak) : std::string("out of memory")) + ", " +
               with_thousands(static_cast<double>(candidate.micro * comm_.world_size()) / candidate.seconds) +
               " samples/s";
    }
  }
  std::fprintf(stdout, "micro-batch auto (budget %s per rank): %s%s; chose %lld%s%s: %s\n",
               format_bytes(pick.search.budget).c_str(), tried.c_str(), timed.c_str(),
               static_cast<long long>(pick.micro), way(pick).c_str(),
               auto_.size() > 1 ? " (the most samples/s)"
               : pick.micro != pick.search.micro ? (" (rank " + std::to_string(limiting_rank) + "'s largest)").c_str()
                                                  : "",
               plan_.describe().c_str());
  std::fflush(stdout);
}

}  // namespace dtrain
