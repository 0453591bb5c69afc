#include "train/trainer.h"

#include "common/error.h"
#include "comm/watchdog.h"
#include "data/sampler.h"
#include "train/checkpoint.h"
#include "train/memory.h"
#include "train/optimizer.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace dtrain {

namespace {

// The sum of per-item cross-entropy: per sample ([N, C] logits), or per target
// token ([N, T, V] logits, -1 targets skipped: padding never counts).
at::Tensor summed_cross_entropy(const at::Tensor& logits, const at::Tensor& targets) {
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(-1));
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

ReducerOptions reducer_options(const DistributedOptions& options) {
  ReducerOptions reducer;
  reducer.bucket_bytes = std::max<int64_t>(1, std::llround(options.bucket_cap_mb * 1024 * 1024));
  reducer.overlap = options.overlap != Switch::Off;
  switch (options.grad_reduce_dtype) {
    case ReduceDtype::Fp32: reducer.reduce_dtype = torch::kFloat; break;
    case ReduceDtype::Bf16: reducer.reduce_dtype = torch::kBFloat16; break;
    case ReduceDtype::Fp16: reducer.reduce_dtype = torch::kHalf; break;
  }
  return reducer;
}

std::string format_metric(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4f", value);
  return text;
}

torch::Tensor as_index_tensor(const std::vector<int64_t>& indices) {
  return torch::from_blob(const_cast<int64_t*>(indices.data()), {static_cast<int64_t>(indices.size())},
                          torch::kLong);
}

}  // namespace

const char* to_string(RunStatus status) {
  switch (status) {
    case RunStatus::Completed: return "completed";
    case RunStatus::Preempted: return "preempted";
    case RunStatus::Diverged: return "diverged";
    case RunStatus::Measured: return "measured";
  }
  return "?";
}

Trainer::Trainer(const Config& config, const BatchPlan& plan, Communicator& comm, Communicator& control,
                 const Dataset& data, std::shared_ptr<Classifier> model)
    : config_(config),
      plan_(plan),
      comm_(comm),
      control_(control),
      data_(data),
      model_(std::move(model)),
      nonfinite_(config.checkpoint.on_nonfinite),
      checkpoint_dir_(checkpoint_dir(config)),
      target_(config.study.target) {
  steps_per_epoch_ = dtrain::steps_per_epoch(data_.train.size(), plan_);
  if (steps_per_epoch_ == 0) {
    throw UsageError("global batch " + std::to_string(plan_.global_batch_size) + " exceeds the training set (" +
                     std::to_string(data_.train.size()) + " samples); use a smaller batch");
  }
  if (__builtin_mul_overflow(config_.run.epochs, steps_per_epoch_, &total_steps_)) {
    throw UsageError("--epochs " + std::to_string(config_.run.epochs) + " is too large");
  }
  // The schedule's horizon is --epochs alone; --max-steps only stops early,
  // so a run stopped there and resumed follows the same trajectory.
  schedule_ = make_lr_schedule(config_.lr, plan_.global_batch_size, steps_per_epoch_, total_steps_);
  steps_to_run_ = config_.run.max_steps > 0 ? std::min(total_steps_, config_.run.max_steps) : total_steps_;

  const NamedParameters named = named_trainable_parameters(*model_);
  std::vector<torch::Tensor> parameters;
  for (const auto& item : named) parameters.push_back(item.second);
  device_ = parameters.front().device();
  local_loss_sum_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device_));
  step_loss_ = torch::zeros_like(local_loss_sum_);
  reducer_ = std::make_unique<GradientReducer>(parameters, comm_, reducer_options(config_.distributed));
  memory_ = MemoryMeter(device_);
  out_of_memory_ = std::make_unique<OutOfMemoryGuard>(config_, control_, device_);
  if (device_.is_cpu() && config_.batch.memory_budget > 0 && !cpu_memory_accounting_installed()) {
    throw UsageError("--memory-budget on CPU is enforced by dtrain's counting allocator, which "
                     "DTRAIN_MEMORY_ACCOUNTING=0 turned off: unset it, or leave out --memory-budget");
  }
  apply_memory_budget(device_, config_.batch.memory_budget);
  optimizer_ = make_optimizer(config_.optimizer, named, schedule_.at(0));
  // Checked here rather than with the options: each is a valid setting alone.
  if (config_.study.stop_at_target && !target_.enabled()) {
    throw UsageError("--stop-at-target needs --target METRIC:VALUE (e.g. --target val_accuracy:0.88)");
  }
  if (target_.enabled() && config_.study.target.metric.rfind("test_", 0) == 0 && data_.test.size() == 0) {
    throw UsageError("--target " + config_.study.target.metric + " needs a test split, and " + data_.name +
                     " has none: use val_loss or val_bits_per_byte with --validation-size N");
  }
  if (config_.study.noise_scale || config_.study.measure_noise_scale > 0) {
    // With --micro-batch-size auto, checked once the split is chosen.
    if (config_.batch.micro_batch_size != kAutoMicroBatch && plan_.world_size * plan_.grad_accum_steps < 2) {
      throw UsageError("the noise scale compares micro-batch gradients with the global batch's, and " +
                       plan_.describe() + " has one micro-batch per step; use 2+ ranks or --grad-accum-steps 2+");
    }
    noise_ = std::make_unique<NoiseScaleAverage>(config_.study.noise_scale_ema);
    reducer_->track_micro_batch_norms(true);
  }

  // Fault injection for the tests of --on-nonfinite: DTRAIN_FAULT_NAN_STEP=N
  // or N:RANK makes step N's loss NaN (on RANK only).
  if (const char* fault = std::getenv("DTRAIN_FAULT_NAN_STEP")) {
    fault_nan_step_ = std::atoll(fault);
    if (const char* colon = std::strchr(fault, ':')) fault_nan_rank_ = std::atoi(colon + 1);
  }

  test_shard_ = eval_shard(data_.test.size(), comm_.rank(), comm_.world_size());
  validation_shard_ = eval_shard(data_.validation.size(), comm_.rank(), comm_.world_size());
  // The train-eval subset matches the held-out split it is compared with
  // (text without a validation split: 1000 rows).
  const int64_t compared = data_.test.size() > 0         ? data_.test.size()
                           : data_.validation.size() > 0 ? data_.validation.size()
                                                         : std::min<int64_t>(data_.train.size(), 1000);
  const auto subset = fixed_subset(data_.train.size(), compared, config_.run.seed);
  for (int64_t position : eval_shard(static_cast<int64_t>(subset.size()), comm_.rank(), comm_.world_size())) {
    train_eval_shard_.push_back(subset[position]);
  }
}

Trainer::~Trainer() = default;

void Trainer::broadcast_initial_state() {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> tensors = trainable_parameters(*model_);
  for (const auto& b : model_->buffers()) tensors.push_back(b);
  if (tensors.empty()) return;
  std::vector<torch::Tensor> flat_views;
  for (const auto& t : tensors) flat_views.push_back(t.reshape({-1}));
  auto flat = torch::cat(flat_views);
  comm_.broadcast(flat, 0);
  int64_t offset = 0;
  for (auto& t : tensors) {
    t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

double Trainer::global_batch_items(int64_t step_in_epoch) const {
  if (!data_.train.target_counts.defined()) return static_cast<double>(plan_.global_batch_size);
  const auto window = torch::from_blob(const_cast<int64_t*>(permutation_.data()) +
                                           step_in_epoch * plan_.global_batch_size,
                                       {plan_.global_batch_size}, torch::kLong);
  return static_cast<double>(data_.train.target_counts.index_select(0, window).sum().item<int64_t>());
}

StepResult Trainer::train_step(int64_t step, bool compute_grad_norm, bool update) {
  if (CollectiveWatchdog* watchdog = comm_.watchdog()) watchdog->set_step(step + 1);
  const int64_t epoch = step / steps_per_epoch_;
  const int64_t step_in_epoch = step % steps_per_epoch_;
  if (epoch != permutation_epoch_) {
    permutation_ = epoch_permutation(data_.train.size(), config_.run.seed, epoch, config_.run.shuffle);
    permutation_epoch_ = epoch;
  }
  StepResult result;
  result.lr = schedule_.at(step);
  for (auto& group : optimizer_->param_groups()) group.options().set_lr(result.lr);

  // Steps 1-3; redone with half the micro-batch while a rank runs out of memory.
  model_->train();
  const double loss_items_per_step = global_batch_items(step_in_epoch);
  result.loss_items = loss_items_per_step;
  while (!accumulate_gradients(step, step_in_epoch, loss_items_per_step)) {
    plan_ = out_of_memory_->smaller_split(plan_, step);
  }
  // 4. Judge the all-reduced gradient: the same on every rank.
  const auto check_start = Clock::now();
  const bool finite = config_.checkpoint.on_nonfinite == NonFinitePolicy::Ignore || reducer_->all_finite();
  nonfinite_check_seconds_ += seconds_since(check_start);
  result.verdict = nonfinite_.judge(finite);
  if (result.verdict != StepVerdict::Update) {
    result.grad_norm = reducer_->grad_norm();  // for the report
    return result;
  }
  // The norm only where it is used: logged, clipped or for the noise scale.
  const double clip = config_.optimizer.grad_clip_norm;
  if (compute_grad_norm || clip > 0 || noise_) result.grad_norm = reducer_->grad_norm();
  if (noise_) measure_noise(result);
  if (!update) return result;
  local_loss_sum_ += step_loss_;
  ++loss_steps_;
  // 5. Clip, then step.
  if (clip > 0 && result.grad_norm > clip) reducer_->scale(clip / (result.grad_norm + 1e-6));
  optimizer_->step();
  memory_.after_update();
  return result;
}

at::Tensor Trainer::summed_train_loss(const std::vector<int64_t>& indices) {
  const auto index_tensor = as_index_tensor(indices);
  const auto inputs = data_.train.inputs.index_select(0, index_tensor).to(device_);
  const auto targets = data_.train.targets.index_select(0, index_tensor).to(device_);
  return summed_cross_entropy(model_->forward(inputs), targets);
}

bool Trainer::accumulate_gradients(int64_t step, int64_t step_in_epoch, double loss_items) {
  // 1. Zero the gradient buckets.
  reducer_->zero_grad();
  step_loss_.zero_();
  memory_.begin_step();
  out_of_memory_->before_step(step, memory_);
  // 2. Micro-batches. The normalizer is the number of loss items in the whole
  // global batch (one per sample; for text, its target tokens), so summing
  // the ranks' gradients gives exactly the gradient of the global mean.
  bool out_of_memory = false;
  try {
    const BudgetScope budget;  // a CPU --memory-budget holds here
    for (int64_t micro_step = 0; micro_step < plan_.grad_accum_steps; ++micro_step) {
      reducer_->begin_micro_step(micro_step == plan_.grad_accum_steps - 1);
      auto loss = summed_train_loss(micro_batch_indices(permutation_, plan_, step_in_epoch, micro_step, comm_.rank())) /
                  loss_items;
      if (step + 1 == fault_nan_step_ && (fault_nan_rank_ < 0 || fault_nan_rank_ == comm_.rank())) {
        loss = loss * std::numeric_limits<double>::quiet_NaN();  // fault injection (tests only)
      }
      loss.backward();
      // Summed on the device; read only when logged, so no host sync per step.
      step_loss_ += loss.detach().to(torch::kDouble);
    }
    // 3. Wait for every bucket's all-reduce (it may run out too, measuring
    // the noise scale).
    reducer_->finish();
  } catch (const c10::OutOfMemoryError& error) {
    if (!out_of_memory_->active()) throw;
    out_of_memory = true;
    out_of_memory_->note_failure(error.what_without_backtrace());
  }
  // A rank that ran out starts what its peers wait for; then all agree
  // whether anyone ran out.
  if (out_of_memory) reducer_->abandon();
  const bool any_ran_out = out_of_memory_->any_rank_failed(out_of_memory);
  memory_.end_micro_steps(/*counts=*/!any_ran_out);
  return !any_ran_out;
}

void Trainer::measure_noise(StepResult& result) {
  const auto start = Clock::now();
  result.noise = unbiased_estimate(observe_noise(*reducer_, comm_, plan_, result.grad_norm));
  result.noise_measured = true;
  // A non-finite gradient let through by --on-nonfinite ignore would poison
  // the averages for the rest of the run: leave it out of them.
  if (std::isfinite(result.noise.grad_sq) && std::isfinite(result.noise.trace)) noise_->add(result.noise);
  noise_seconds_ += seconds_since(start);
}

std::vector<double> Trainer::all_reduce_sums(const std::vector<double>& values) {
  // On the training device, so the NCCL backend can take it too.
  auto sums = torch::tensor(values, torch::kDouble).to(device_);
  CollectiveWatchdog::Scope watched(comm_.watchdog(), "evaluation all-reduce");
  comm_.all_reduce(sums);
  sums = sums.cpu();
  return std::vector<double>(sums.data_ptr<double>(), sums.data_ptr<double>() + sums.numel());
}

double Trainer::take_mean_train_loss() {
  auto sum = local_loss_sum_.reshape({1}).clone();
  CollectiveWatchdog::Scope watched(comm_.watchdog(), "train-loss all-reduce");
  comm_.all_reduce(sum);
  const double mean = loss_steps_ > 0 ? sum.item<double>() / static_cast<double>(loss_steps_) : NAN;
  local_loss_sum_.zero_();
  loss_steps_ = 0;
  return mean;
}

EvalResult Trainer::evaluate(const Split& split, const std::vector<int64_t>& indices) {
  torch::NoGradGuard no_grad;
  model_->eval();
  constexpr int64_t kChunk = 1000;
  // Token rows: chunks whose logits [rows, T, 256] and attention scores
  // [rows, heads, T, T] stay near 2^24 floats each.
  const int64_t row_floats =
      split.target_counts.defined()
          ? split.inputs.size(1) * std::max<int64_t>(256, config_.model.n_head * split.inputs.size(1))
          : 1;
  const int64_t chunk = split.target_counts.defined() ? std::max<int64_t>(1, (int64_t{1} << 24) / row_floats) : kChunk;
  double loss_sum = 0;
  int64_t correct = 0, items = 0;
  for (size_t start = 0; start < indices.size(); start += chunk) {
    const int64_t count = std::min<int64_t>(chunk, static_cast<int64_t>(indices.size() - start));
    const auto index_tensor =
        torch::from_blob(const_cast<int64_t*>(indices.data() + start), {count}, torch::kLong);
    const auto logits = model_->forward(split.inputs.index_select(0, index_tensor).to(device_));
    const auto targets = split.targets.index_select(0, index_tensor).to(device_);
    loss_sum += summed_cross_entropy(logits, targets).item<double>();
    correct += logits.argmax(-1).eq(targets).sum().item<int64_t>();  // a -1 target is never a class
    items += split.target_counts.defined() ? split.target_counts.index_select(0, index_tensor).sum().item<int64_t>()
                                           : count;
  }
  const auto sums = all_reduce_sums(
      {loss_sum, static_cast<double>(correct), static_cast<double>(indices.size()), static_cast<double>(items)});
  EvalResult result;
  result.samples = static_cast<int64_t>(sums[2]);
  result.items = static_cast<int64_t>(sums[3]);
  result.loss = result.items > 0 ? sums[0] / static_cast<double>(result.items) : NAN;
  result.accuracy = result.items > 0 ? sums[1] / static_cast<double>(result.items) : NAN;
  return result;
}

nlohmann::json Trainer::evaluate_all(int64_t steps_done) {
  // Text datasets have no test split: their held-out documents are the validation split.
  const bool has_test = data_.test.size() > 0;
  const bool has_validation = data_.validation.size() > 0;
  const EvalResult test = has_test ? evaluate(data_.test, test_shard_) : EvalResult{};
  const EvalResult train = evaluate(data_.train, train_eval_shard_);
  const EvalResult validation = has_validation ? evaluate(data_.validation, validation_shard_) : EvalResult{};
  nlohmann::json event = {
      {"event", "eval"},
      {"step", steps_done},
      {"epoch", static_cast<double>(steps_done) / static_cast<double>(steps_per_epoch_)},
      {"samples_seen", steps_done * plan_.global_batch_size},
      {"train_eval_loss", train.loss},
      {"train_eval_accuracy", train.accuracy},
      {"train_eval_samples", train.samples},
  };
  auto add = [&](const std::string& prefix, const EvalResult& result) {
    event[prefix + "_loss"] = result.loss;
    event[prefix + "_accuracy"] = result.accuracy;
    event[prefix + "_samples"] = result.samples;
    if (data_.tokens) {  // byte tokens: nats per token / ln 2 = bits per byte
      event[prefix + "_tokens"] = result.items;
      event[prefix + "_bits_per_byte"] = result.loss / std::log(2.0);
      event[prefix + "_perplexity"] = std::exp(result.loss);
    }
  };
  if (has_test) add("test", test);
  add("train_eval", train);
  if (has_validation) add("val", validation);
  // Classification: train-subset accuracy minus test accuracy; text: held-out
  // loss minus train-subset loss (nats per token).
  if (has_test) event["generalization_gap"] = train.accuracy - test.accuracy;
  else if (data_.tokens && has_validation) event["generalization_gap"] = validation.loss - train.loss;
  if (is_root()) {
    std::string line;
    if (data_.tokens) {
      char text[256];
      std::snprintf(text, sizeof text, "val loss %.4f (%.3f bits/byte, perplexity %.2f) | train-subset loss %.4f",
                    validation.loss, validation.loss / std::log(2.0), std::exp(validation.loss), train.loss);
      line = has_validation ? text : "train-subset loss " + format_metric(train.loss);
    } else {
      const std::string val = has_validation ? " | val acc " + format_metric(validation.accuracy) + " loss " +
                                                   format_metric(validation.loss)
                                             : "";
      char text[256];
      std::snprintf(text, sizeof text, "test acc %.4f loss %.4f%s | train-subset acc %.4f loss %.4f | gap %+.4f",
                    test.accuracy, test.loss, val.c_str(), train.accuracy, train.loss, train.accuracy - test.accuracy);
      line = text;
    }
    std::fprintf(stdout, "eval step %lld (epoch %.2f): %s\n", static_cast<long long>(steps_done),
                 event["epoch"].get<double>(), line.c_str());
    std::fflush(stdout);
  }
  return event;
}

void Trainer::print_plan() const {
  if (!is_root()) return;
  std::fprintf(stdout, "%s; lr %g -> %g (%s, base batch %lld)\n", plan_.describe().c_str(), schedule_.base_lr,
               schedule_.peak_lr, to_string(config_.lr.scaling), static_cast<long long>(config_.lr.base_batch_size));
  const std::string stop = steps_to_run_ < total_steps_
                               ? " (stopping after " + std::to_string(steps_to_run_) + " by --max-steps)"
                               : "";
  std::fprintf(stdout, "%lld steps/epoch x %lld epochs = %lld steps%s; %lld samples dropped per epoch (incomplete last batch); warmup %lld steps\n",
               static_cast<long long>(steps_per_epoch_), static_cast<long long>(config_.run.epochs),
               static_cast<long long>(total_steps_), stop.c_str(),
               static_cast<long long>(dropped_per_epoch(data_.train.size(), plan_)),
               static_cast<long long>(schedule_.warmup_steps));
  std::fflush(stdout);
}

void Trainer::evaluate_and_log(int64_t steps_done, MetricsLog& log) {
  last_eval_ = evaluate_all(steps_done);
  last_eval_["elapsed_sec"] = seconds_since(run_start_);
  log.record(last_eval_);
  if (target_.observe(last_eval_, steps_done, steps_done * plan_.global_batch_size)) {
    nlohmann::json reached = {{"event", "target"}, {"step", steps_done}};
    target_.describe(reached);
    log.record(reached);
    if (is_root()) {
      std::fprintf(stdout, "target %s reached at step %lld (%lld samples)%s\n", config_.study.target.metric.c_str(),
                   static_cast<long long>(steps_done), static_cast<long long>(steps_done * plan_.global_batch_size),
                   config_.study.stop_at_target ? "; stopping (--stop-at-target)" : "");
      std::fflush(stdout);
    }
    stop_at_target_ = config_.study.stop_at_target;
  }
}

void Trainer::log_progress(int64_t steps_done, const StepResult& result, MetricsLog& log) {
  const double loss = take_mean_train_loss();
  const double samples_per_second =
      static_cast<double>(interval_steps_ * plan_.global_batch_size) / interval_seconds_;
  const int64_t steps_this_run = steps_done - start_step_;
  const double eta = train_seconds_ / static_cast<double>(std::max<int64_t>(steps_this_run, 1)) *
                     static_cast<double>(steps_to_run_ - steps_done);
  const double epoch = static_cast<double>(steps_done) / static_cast<double>(steps_per_epoch_);
  nlohmann::json event = {{"event", "train"},
              {"step", steps_done},
              {"epoch", epoch},
              {"samples_seen", steps_done * plan_.global_batch_size},
              {"lr", result.lr},
              {"train_loss", loss},
              {"grad_norm", result.grad_norm},
              {"samples_per_sec", samples_per_second},
              {"elapsed_sec", seconds_since(run_start_)}};
  std::string noise_text;
  if (noise_) {
    // Averages of estimates that may be negative: B_simple only where both are positive.
    const bool valid = !noise_->empty() && noise_->grad_sq() > 0 && noise_->trace() > 0 &&
                       std::isfinite(noise_->b_simple());
    event["noise_scale"] = valid ? nlohmann::json(noise_->b_simple()) : nlohmann::json(nullptr);
    event["noise_grad_sq"] = noise_->empty() ? nlohmann::json(nullptr) : nlohmann::json(noise_->grad_sq());
    event["noise_trace"] = noise_->empty() ? nlohmann::json(nullptr) : nlohmann::json(noise_->trace());
    if (valid) noise_text = " | B_simple " + std::to_string(std::llround(noise_->b_simple()));
  }
  std::string rate = std::to_string(std::llround(samples_per_second)) + " samples/s";
  if (data_.tokens) {
    const double tokens_per_second = interval_tokens_ / interval_seconds_;
    event["tokens_per_sec"] = tokens_per_second;
    rate = std::to_string(std::llround(tokens_per_second)) + " tokens/s";
  }
  log.record(event);
  if (is_root()) {
    std::fprintf(stderr, "step %lld/%lld | epoch %.2f | loss %.4f | lr %.4g | grad norm %.3g%s | %s | eta %s\n",
                 static_cast<long long>(steps_done), static_cast<long long>(steps_to_run_), epoch, loss, result.lr,
                 result.grad_norm, noise_text.c_str(), rate.c_str(), format_duration(eta).c_str());
  }
  interval_seconds_ = 0;
  interval_steps_ = 0;
  interval_tokens_ = 0;
}

void Trainer::report_nonfinite(int64_t steps_done, const StepResult& result, MetricsLog& log) {
  // This step's loss over all ranks (every rank is here: the verdict is shared).
  auto loss = step_loss_.reshape({1}).clone();
  comm_.all_reduce(loss);
  const double step_loss = loss.item<double>();
  const bool diverged = result.verdict == StepVerdict::Diverge;
  log.record({{"event", diverged ? "diverged" : "skip"},
              {"step", steps_done},
              // JSON has no NaN or Inf: non-finite values as text.
              {"loss", std::isfinite(step_loss) ? nlohmann::json(step_loss) : nlohmann::json(std::to_string(step_loss))},
              {"grad_norm", std::isfinite(result.grad_norm) ? nlohmann::json(result.grad_norm)
                                                             : nlohmann::json(std::to_string(result.grad_norm))},
              {"lr", result.lr},
              {"consecutive_skips", nonfinite_.consecutive()},
              {"skipped_steps", nonfinite_.skipped_total()}});
  if (!is_root()) return;
  auto number = [](double value) {
    if (std::isnan(value)) return std::string("nan");
    char text[32];
    std::snprintf(text, sizeof text, "%g", value);
    return std::string(text);
  };
  if (diverged) {
    const std::string streak =
        nonfinite_.consecutive() > 1 ? " after " + std::to_string(nonfinite_.consecutive()) + " non-finite steps in a row" : "";
    std::fprintf(stderr,
                 "dtrain: error: diverged at step %lld (loss %s, gradient norm %s, lr %s)%s; lower --lr, add warmup "
                 "(--warmup-steps) or --grad-clip-norm, or continue from a checkpoint with --on-nonfinite skip\n",
                 static_cast<long long>(steps_done), number(step_loss).c_str(), number(result.grad_norm).c_str(),
                 number(result.lr).c_str(), streak.c_str());
  } else {
    std::fprintf(stderr, "step %lld: non-finite loss %s or gradient norm %s at lr %s: update skipped (%lld in a row)\n",
                 static_cast<long long>(steps_done), number(step_loss).c_str(), number(result.grad_norm).c_str(),
                 number(result.lr).c_str(), static_cast<long long>(nonfinite_.consecutive()));
  }
  std::fflush(stderr);
}

bool Trainer::checkpoint_due(int64_t steps_done) const {
  const int64_t every = config_.checkpoint.every_steps;
  if (every > 0 && steps_done % every == 0) return true;
  // A run stopped by --max-steps can be continued, when checkpoints are on.
  const bool checkpoints_on = every > 0 || config_.checkpoint.every_minutes > 0;
  return checkpoints_on && steps_done == steps_to_run_ && steps_to_run_ < total_steps_;
}

nlohmann::json Trainer::run(MetricsLog& log) {
  run_start_ = Clock::now();
  print_plan();
  install_preemption_handlers();
  StopAgreement agreement(control_, config_.checkpoint.every_minutes);
  double agreement_seconds = 0;
  double steady_seconds = 0;  // training time past the first kWarmupSteps (allocator and cache warm-up)
  constexpr int64_t kWarmupSteps = 20;
  RunStatus status = RunStatus::Completed;
  int64_t steps_done = start_step_;
  // A run resumed from the checkpoint of the step that met --target with
  // --stop-at-target is already done.
  for (int64_t step = start_step_; step < steps_to_run_ && !stop_at_target_; ++step) {
    // Steps 1-5.
    const auto step_start = Clock::now();
    const bool log_due = (step + 1) % config_.run.log_every == 0 || step + 1 == steps_to_run_;
    const StepResult result = train_step(step, log_due);
    const double step_seconds = seconds_since(step_start);
    train_seconds_ += step_seconds;
    if (step - start_step_ >= kWarmupSteps) steady_seconds += step_seconds;
    interval_seconds_ += step_seconds;
    ++interval_steps_;
    interval_tokens_ += result.loss_items;
    run_tokens_ += result.loss_items;
    run_seconds_ += step_seconds;
    steps_done = step + 1;
    for (const auto& event : out_of_memory_->take_events()) log.record(event);
    if (steps_done == start_step_ + 1) report_memory(log);
    if (result.verdict != StepVerdict::Update) report_nonfinite(steps_done, result, log);
    if (result.verdict == StepVerdict::Diverge) {
      status = RunStatus::Diverged;
      break;
    }
    // Progress, metrics and evaluation on their schedules.
    const bool log_now = steps_done % config_.run.log_every == 0;
    const bool eval_now =
        evaluation_due(steps_done, steps_per_epoch_, config_.run.eval_every, config_.study.eval_per_doubling);
    if (log_now) log_progress(steps_done, result, log);
    if (eval_now) evaluate_and_log(steps_done, log);
    // The target ends the run: its last progress line goes before the
    // checkpoint, so that a resume from it logs nothing more.
    if (stop_at_target_ && !log_now) log_progress(steps_done, result, log);
    // 6. Agree on a stop or a timed checkpoint. 7. Checkpoint; stop if preempted.
    const auto agreement_start = Clock::now();
    const StepDecision decision = agreement.decide();
    agreement_seconds += seconds_since(agreement_start);
    if (decision.stop || decision.checkpoint || checkpoint_due(steps_done)) {
      save_checkpoint(steps_done, log);
      agreement.checkpoint_written();
    }
    // A signal at the last step: the run is complete anyway.
    if (decision.stop && steps_done < steps_to_run_ && !stop_at_target_) {
      status = RunStatus::Preempted;
      break;
    }
    // The last step always reports; after the checkpoint, so that a run
    // continued from it logs exactly what an uninterrupted run logs.
    if (stop_at_target_) break;
    if (steps_done == steps_to_run_) {
      if (!log_now) log_progress(steps_done, result, log);
      if (!eval_now) evaluate_and_log(steps_done, log);
    }
  }
  // E.g. --epochs 0 evaluates the given weights.
  if (last_eval_.is_null() && status == RunStatus::Completed) last_eval_ = evaluate_all(steps_done);

  const int64_t steps_this_run = steps_done - start_step_;
  auto per_step_ms = [&](double seconds, int64_t steps) {
    return steps > 0 ? nlohmann::json(1000 * seconds / static_cast<double>(steps)) : nlohmann::json(nullptr);
  };
  const int64_t global_batch = plan_.global_batch_size;
  nlohmann::json summary = {
      {"status", to_string(status)},
      {"steps", steps_done},
      {"resumed_from_step", start_step_},
      {"schedule_steps", total_steps_},
      {"epochs", static_cast<double>(steps_done) / static_cast<double>(steps_per_epoch_)},
      {"samples_seen", steps_done * global_batch},
      {"global_batch_size", global_batch},
      {"micro_batch_size", plan_.micro_batch_size},
      {"grad_accum_steps", plan_.grad_accum_steps},
      {"world_size", plan_.world_size},
      {"peak_lr", schedule_.peak_lr},
      {"train_seconds", train_seconds_},
      {"steady_ms_per_step", per_step_ms(steady_seconds, steps_this_run - kWarmupSteps)},
      {"agreement_ms_per_step", per_step_ms(agreement_seconds, steps_this_run)},
      {"nonfinite_check_ms_per_step", per_step_ms(nonfinite_check_seconds_, steps_this_run)},
      {"skipped_steps", nonfinite_.skipped_total()},
      {"wall_seconds", seconds_since(run_start_)},
      {"samples_per_sec", train_seconds_ > 0 ? static_cast<double>(steps_done * global_batch) / train_seconds_ : 0.0},
      {"test_accuracy", last_eval_["test_accuracy"]},
      {"test_loss", last_eval_["test_loss"]},
      {"train_eval_accuracy", last_eval_["train_eval_accuracy"]},
      {"train_eval_loss", last_eval_["train_eval_loss"]},
      {"generalization_gap", last_eval_["generalization_gap"]},
      {"stopped_at_target", stop_at_target_},
  };
  if (last_eval_.contains("val_accuracy")) {
    summary["val_accuracy"] = last_eval_["val_accuracy"];
    summary["val_loss"] = last_eval_["val_loss"];
  }
  add_memory(summary);
  if (data_.tokens) {
    for (const char* key : {"val_bits_per_byte", "val_perplexity", "train_eval_bits_per_byte"}) {
      summary[key] = last_eval_.contains(key) ? last_eval_[key] : nlohmann::json(nullptr);
    }
    summary["tokens_per_sec"] = run_seconds_ > 0 ? run_tokens_ / run_seconds_ : 0.0;
  }
  target_.describe(summary);
  if (noise_) {
    const bool valid = !noise_->empty() && noise_->grad_sq() > 0 && noise_->trace() > 0 &&
                       std::isfinite(noise_->b_simple());
    summary["noise_scale"] = valid ? nlohmann::json(noise_->b_simple()) : nlohmann::json(nullptr);
    summary["noise_scale_ms_per_step"] = per_step_ms(noise_seconds_, steps_this_run);
  }
  if (status == RunStatus::Preempted) summary["checkpoint"] = checkpoint_dir_ + "/" + checkpoint_name(steps_done);
  return summary;
}

nlohmann::json Trainer::measure_noise_scale(int64_t steps) {
  run_start_ = Clock::now();
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
  return {{"status", to_string(RunStatus::Measured)},
          {"steps", start_step_},
          {"global_batch_size", plan_.global_batch_size},
          {"micro_batch_size", plan_.micro_batch_size},
          {"grad_accum_steps", plan_.grad_accum_steps},
          {"world_size", plan_.world_size},
          {"noise_scale", {{"b_simple", finite(m.b_simple)},
                           {"ci95", {finite(m.low), finite(m.high)}},
                           {"grad_sq", m.grad_sq},
                           {"trace", m.trace},
                           {"batches", m.steps}}},
          {"wall_seconds", seconds_since(run_start_)}};
}

}  // namespace dtrain
