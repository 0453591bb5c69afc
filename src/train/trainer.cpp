// The training loop: Trainer::run is the numbered protocol of trainer.h, one
// call per number; train_step and accumulate_gradients are steps 1-5. The
// services it calls (report, evaluator, preemption, checkpoint, memory) each
// decide for themselves what is due.
#include "train/trainer.h"

#include "comm/watchdog.h"
#include "common/error.h"
#include "ddp/reducer.h"
#include "memory/out_of_memory.h"
#include "models/gpt.h"
#include "models/precision.h"
#include "optim/optimizer.h"
#include "run/checkpoint.h"
#include "run/evaluator.h"
#include "run/preemption.h"
#include "run/updater.h"

#include <torch/torch.h>

#include <cstdio>
#include <limits>

namespace dtrain {

namespace {

ReducerOptions reducer_options(const Config& config, int world_size) {
  const DistributedOptions& options = config.distributed;
  ReducerOptions reducer;
  reducer.shard_optimizer_state =
      options.shard_optimizer_state == Switch::On ||
      (options.shard_optimizer_state == Switch::Auto && world_size > 1 && keeps_state(config.optimizer));
  reducer.bucket_bytes = std::max<int64_t>(1, std::llround(options.bucket_cap_mb * 1024 * 1024));
  reducer.overlap = options.overlap != Switch::Off;
  switch (options.grad_reduce_dtype) {
    case ReduceDtype::Fp32: reducer.reduce_dtype = torch::kFloat; break;
    case ReduceDtype::Bf16: reducer.reduce_dtype = torch::kBFloat16; break;
    case ReduceDtype::Fp16: reducer.reduce_dtype = torch::kHalf; break;
  }
  reducer.check_finite_in_backward = config.failure.on_nonfinite != NonFinitePolicy::Ignore;
  return reducer;
}

// The schedule as it runs: adaptive's default START is the smallest allowed
// batch that still has two micro-batches for the noise scale to compare.
BatchSchedulePlan schedule_plan(const Config& config, const BatchPlan& plan) {
  BatchSchedulePlan schedule = config.batch.schedule;
  if (schedule.kind == BatchScheduleKind::Adaptive && schedule.start == 0) {
    schedule.start = plan.world_size * plan.micro_batch_size * (plan.world_size >= 2 ? 1 : 2);
  }
  return schedule;
}

torch::Tensor as_index_tensor(const std::vector<int64_t>& indices) {
  return torch::from_blob(const_cast<int64_t*>(indices.data()), {static_cast<int64_t>(indices.size())},
                          torch::kLong);
}

}  // namespace

Trainer::Trainer(const Config& config, const BatchPlan& plan, Communicator& comm, Communicator& control,
                 const Dataset& data, std::shared_ptr<Model> model)
    : config_(config),
      plan_(plan),
      comm_(comm),
      control_(control),
      data_(data),
      model_(std::move(model)),
      length_(run_length(data.train.size(), plan, config.run.epochs, config.run.max_steps)),
      schedule_(make_lr_schedule(config.lr, plan.global_batch_size, length_.steps_per_epoch, length_.total_steps)),
      order_(data.train.size(), config.run.seed, config.run.shuffle),
      batch_(schedule_plan(config, plan), config.batch.adaptive_factor, data.train.size(), config.run.epochs,
             plan.global_batch_size, plan.world_size * std::max<int64_t>(plan.micro_batch_size, 1)),
      nonfinite_(config.failure.on_nonfinite) {
  const NamedParameters named = named_trainable_parameters(*model_);
  std::vector<torch::Tensor> parameters;
  for (const auto& item : named) parameters.push_back(item.second);
  device_ = parameters.front().device();
  set_tf32(config_.run.precision);
  // SDPA where LibTorch has it, except fp32 on a GPU: its CUDA backward
  // kernels (memory-efficient attention) are not bitwise reproducible, and
  // fp32 is the mode whose runs repeat to the last bit.
  if (auto* gpt = dynamic_cast<Gpt*>(model_.get())) {
    const bool fused = fused_attention_available() && !(device_.is_cuda() && config_.run.precision == Precision::Fp32);
    gpt->set_attention_kernel(fused ? AttentionKernel::Fused : AttentionKernel::Explicit);
  }
  loss_.since_logged = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device_));
  loss_.step = torch::zeros_like(loss_.since_logged);
  reducer_ = std::make_unique<GradientReducer>(parameters, comm_, reducer_options(config_, comm_.world_size()));
  memory_ = MemoryMeter(device_);
  out_of_memory_ = std::make_unique<OutOfMemoryGuard>(config_, control_, device_);
  if (device_.is_cpu() && config_.batch.memory_budget > 0 && !cpu_memory_accounting_installed()) {
    throw UsageError("--memory-budget on CPU is enforced by dtrain's counting allocator, which "
                     "DTRAIN_MEMORY_ACCOUNTING=0 turned off: unset it, or leave out --memory-budget");
  }
  apply_memory_budget(device_, config_.batch.memory_budget);
  // The fused AdamW step where LibTorch has it, except in fp32 (the
  // equivalence tests' mode keeps the loop).
  const Precision precision = config_.run.precision;
  const bool fused = (precision == Precision::Tf32 || precision == Precision::Bf16Mixed) && fused_adamw_available();
  updater_ = std::make_unique<Updater>(config_.optimizer, named, *reducer_, comm_, schedule_.at(0), fused);
  evaluator_ = std::make_unique<Evaluator>(config_, data_, comm_, device_);
  if (!batch_.constant()) {
    if (config_.batch.micro_batch_size == kAutoMicroBatch) {
      throw UsageError("--batch-schedule " + std::string(batch_.adaptive() ? "adaptive" : "rampup") +
                       " needs a fixed micro-batch (each batch on it must split into whole micro-batches): give "
                       "--micro-batch-size instead of auto");
    }
    if (config_.study.measure_noise_scale > 0) {
      throw UsageError("--measure-noise-scale measures at one batch: leave out --batch-schedule");
    }
    if (batch_.adaptive() && !config_.study.noise_scale) {
      throw UsageError("--batch-schedule adaptive grows the batch toward the online noise scale: add --noise-scale true");
    }
    check_batch_schedule(schedule_plan(config_, plan_), plan_.global_batch_size, plan_.world_size,
                         plan_.micro_batch_size);
    use_global_batch(batch_.global_batch());
  }
  for (const auto& [flag, samples] : {std::pair<const char*, int64_t>{"--measure-sharpness", config_.study.measure_sharpness},
                                      {"--sharpness-at-end", config_.study.sharpness_at_end}}) {
    if (samples > data_.train.size()) {
      throw UsageError(std::string(flag) + " " + std::to_string(samples) + ": the training split has " +
                       std::to_string(data_.train.size()) + " samples; give at most that");
    }
  }
  if (config_.study.noise_scale || config_.study.measure_noise_scale > 0) {
    // With --micro-batch-size auto, checked once the split is chosen.
    if (config_.batch.micro_batch_size != kAutoMicroBatch) check_noise_scale_split(plan_, /*chosen_by_auto=*/false);
    noise_ = std::make_unique<NoiseScaleAverage>(config_.study.noise_scale_ema);
    reducer_->track_micro_batch_norms(true);
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

double Trainer::global_batch_items(const std::vector<int64_t>& permutation, int64_t window_start) const {
  if (!data_.train.target_counts.defined()) return static_cast<double>(plan_.global_batch_size);
  const auto window = torch::from_blob(const_cast<int64_t*>(permutation.data()) + window_start,
                                       {plan_.global_batch_size}, torch::kLong);
  return static_cast<double>(data_.train.target_counts.index_select(0, window).sum().item<int64_t>());
}

StepResult Trainer::train_step(int64_t step, bool compute_grad_norm, bool update) {
  // A constant batch's windows follow from the step alone (tests address
  // any step); a changing batch's only from the steps before it.
  if (batch_.position().steps_done != step) {
    if (!batch_.constant()) {
      throw Error("internal: step " + std::to_string(step) + " asked at position " +
                  std::to_string(batch_.position().steps_done));
    }
    batch_.restore_steps(step);
  }
  const StepResult result = step_on_window(step, compute_grad_norm, update);
  batch_.advance();
  return result;
}

double Trainer::lr_now(int64_t step) const {
  if (batch_.constant()) return schedule_.at(step);
  const double position = static_cast<double>(batch_.position().samples_seen) /
                          static_cast<double>(batch_.final_batch());
  if (config_.batch.schedule_lr == BatchScheduleLr::Fixed) return schedule_.at_position(position);
  LrSchedule at_batch = schedule_;
  at_batch.peak_lr = scaled_peak_lr(config_.lr.lr, plan_.global_batch_size, config_.lr.base_batch_size,
                                    config_.lr.scaling);
  return at_batch.at_position(position);
}

void Trainer::use_global_batch(int64_t global) {
  plan_ = derive_batch_plan(plan_.micro_batch_size, 0, global, plan_.world_size);
  length_.steps_per_epoch = data_.train.size() / global;
  length_.total_steps = batch_.position().steps_done + batch_.steps_left();
  const int64_t max_steps = config_.run.max_steps;
  length_.steps_to_run = max_steps > 0 ? std::min(length_.total_steps, max_steps) : length_.total_steps;
}

void Trainer::follow_batch_schedule(bool evaluated, MetricsLog& log) {
  if (batch_.constant()) return;
  std::optional<double> b_simple;
  if (noise_) b_simple = noise_->valid_b_simple();
  const std::optional<BatchChange> change = batch_.update(evaluated, b_simple);
  if (!change) return;
  use_global_batch(change->to);
  const double lr = lr_now(change->step);
  log.record({{"event", "batch_change"},
              {"step", change->step},
              {"samples_seen", batch_.position().samples_seen},
              {"from_global_batch_size", change->from},
              {"global_batch_size", change->to},
              {"grad_accum_steps", plan_.grad_accum_steps},
              {"lr", lr},
              {"reason", change->reason}});
  if (is_root()) {
    std::fprintf(stdout, "batch change after step %lld (%s): %s; lr %.4g\n", static_cast<long long>(change->step),
                 change->reason.c_str(), plan_.describe().c_str(), lr);
    std::fflush(stdout);
  }
}

StepResult Trainer::step_on_window(int64_t step, bool compute_grad_norm, bool update) {
  if (CollectiveWatchdog* watchdog = comm_.watchdog()) watchdog->set_step(step + 1);
  const int64_t window_start = batch_.position().offset;
  const std::vector<int64_t>& permutation = order_.of_epoch(batch_.position().epoch);
  StepResult result;
  result.lr = lr_now(step);
  updater_->set_lr(result.lr);

  // Steps 1-3; redone with half the micro-batch while a rank runs out of memory.
  model_->train();
  result.loss_items = global_batch_items(permutation, window_start);
  while (!accumulate_gradients(permutation, step, window_start, result.loss_items)) {
    plan_ = out_of_memory_->smaller_split(plan_, step);
  }
  // 4. Judge the all-reduced gradient: the same on every rank.
  const auto check_start = Throughput::Clock::now();
  const bool finite = config_.failure.on_nonfinite == NonFinitePolicy::Ignore || reducer_->all_finite();
  time_.nonfinite_check_seconds += seconds_since(check_start);
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
  loss_.since_logged += loss_.step;
  ++loss_.steps;
  // 5. Clip, then step.
  if (clip > 0 && result.grad_norm > clip) reducer_->scale(clip / (result.grad_norm + 1e-6));
  updater_->step(step);
  memory_.after_update();
  return result;
}

at::Tensor Trainer::summed_train_loss(const std::vector<int64_t>& indices) {
  const auto index_tensor = as_index_tensor(indices);
  const auto inputs = data_.train.inputs.index_select(0, index_tensor).to(device_);
  const auto targets = data_.train.targets.index_select(0, index_tensor).to(device_);
  // Forward and loss under --precision; the caller's backward runs outside.
  const PrecisionScope precision(config_.run.precision, device_.type());
  return summed_cross_entropy(model_->forward(inputs), targets);
}

bool Trainer::accumulate_gradients(const std::vector<int64_t>& permutation, int64_t step, int64_t window_start,
                                   double loss_items) {
  // 1. Zero the gradient buckets.
  reducer_->zero_grad();
  loss_.step.zero_();
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
      auto loss =
          summed_train_loss(micro_batch_indices_at(permutation, plan_, window_start, micro_step, comm_.rank())) /
          loss_items;
      if (fault_nan_.fires(step, comm_.rank())) loss = loss * std::numeric_limits<double>::quiet_NaN();
      loss.backward();
      loss_.step += loss.detach().to(torch::kDouble);
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
  const auto start = Throughput::Clock::now();
  result.noise = unbiased_estimate(observe_noise(*reducer_, comm_, plan_, result.grad_norm));
  result.noise_measured = true;
  // A non-finite gradient let through by --on-nonfinite ignore would poison
  // the averages for the rest of the run: leave it out of them.
  if (std::isfinite(result.noise.grad_sq) && std::isfinite(result.noise.trace)) noise_->add(result.noise);
  time_.noise_seconds += seconds_since(start);
}

double Trainer::take_mean_train_loss() {
  auto sum = loss_.since_logged.reshape({1}).clone();
  CollectiveWatchdog::Scope watched(comm_.watchdog(), "train-loss all-reduce");
  comm_.all_reduce(sum);
  const double mean = loss_.steps > 0 ? sum.item<double>() / static_cast<double>(loss_.steps) : NAN;
  loss_.since_logged.zero_();
  loss_.steps = 0;
  return mean;
}

void Trainer::report_nonfinite_step(int64_t steps_done, const StepResult& result, MetricsLog& log) {
  // This step's loss over all ranks (every rank is here: the verdict is shared).
  auto loss = loss_.step.reshape({1}).clone();
  comm_.all_reduce(loss);
  report_nonfinite(is_root(), steps_done, result.verdict == StepVerdict::Diverge, loss.item<double>(),
                   result.grad_norm, result.lr, nonfinite_.consecutive(), nonfinite_.skipped_total(), log);
}

bool Trainer::checkpoint_due(int64_t steps_done) const {
  const int64_t every = config_.checkpoint.every_steps;
  if (every > 0 && steps_done % every == 0) return true;
  // A run stopped by --max-steps can be continued, when checkpoints are on.
  const bool checkpoints_on = every > 0 || config_.checkpoint.every_minutes > 0;
  return checkpoints_on && steps_done == length_.steps_to_run && length_.steps_to_run < length_.total_steps;
}

RunOutcome Trainer::run(MetricsLog& log) {
  time_.start = Throughput::Clock::now();
  if (is_root()) {
    print_plan(plan_, schedule_, config_.lr, length_, config_.run.epochs, dropped_per_epoch(data_.train.size(), plan_));
    if (!batch_.constant()) print_batch_schedule(config_.batch, batch_);
  }
  StopAgreement agreement(control_, config_.checkpoint.every_minutes);
  RunStatus status = RunStatus::Completed;
  int64_t steps_done = start_step_;
  auto progress = [&](const StepResult& result) {
    report_progress(is_root(), batch_.position(), start_step_, take_mean_train_loss(), result.lr, result.grad_norm,
                    noise_.get(), length_, plan_, data_.tokens, time_, log);
  };
  auto evaluate = [&](bool final) {
    evaluator_->evaluate_and_log(*model_, batch_.position(), time_.elapsed(), log, final);
  };
  // A run resumed from the checkpoint of the step that met --target with
  // --stop-at-target is already done.
  for (int64_t step = start_step_; step < length_.steps_to_run && !evaluator_->stop_at_target(); ++step) {
    // Steps 1-5.
    const auto step_start = Throughput::Clock::now();
    const StepResult result = train_step(step, (step + 1) % config_.run.log_every == 0 || step + 1 == length_.steps_to_run);
    time_.add_step(seconds_since(step_start), result.loss_items, step - start_step_);
    steps_done = step + 1;
    for (const auto& event : out_of_memory_->take_events()) log.record(event);
    if (steps_done == start_step_ + 1) {
      report_memory(is_root(), memory_breakdown(), steps_done, plan_.micro_batch_size, log);
    }
    if (result.verdict != StepVerdict::Update) report_nonfinite_step(steps_done, result, log);
    if (result.verdict == StepVerdict::Diverge) {
      status = RunStatus::Diverged;
      break;
    }
    // Progress, metrics and evaluation on their schedules.
    const bool log_now = steps_done % config_.run.log_every == 0;
    const bool eval_now = evaluator_->due(batch_.position());
    if (log_now) progress(result);
    if (eval_now) evaluate(/*final=*/steps_done == length_.steps_to_run);
    // A changing batch moves on (it may end the run sooner: the epoch's rest
    // no longer fits).
    follow_batch_schedule(eval_now, log);
    const bool last = steps_done == length_.steps_to_run;
    // The target ends the run: its last progress line goes before the
    // checkpoint, so that a resume from it logs nothing more.
    const bool stop_at_target = evaluator_->stop_at_target();
    if (stop_at_target && !log_now) progress(result);
    // 6. Agree on a stop or a timed checkpoint. 7. Checkpoint; stop if preempted.
    const auto agreement_start = Throughput::Clock::now();
    const StepDecision decision = agreement.decide();
    time_.agreement_seconds += seconds_since(agreement_start);
    if (decision.stop || decision.checkpoint || checkpoint_due(steps_done)) {
      save_checkpoint(steps_done, log);
      agreement.checkpoint_written();
    }
    // A signal at the last step: the run is complete anyway.
    if (decision.stop && !last && !stop_at_target) {
      status = RunStatus::Preempted;
      break;
    }
    // The last step always reports; after the checkpoint, so that a run
    // continued from it logs exactly what an uninterrupted run logs.
    if (stop_at_target) break;
    if (last && !log_now) progress(result);
    if (last && !evaluator_->complete_at(steps_done)) evaluate(/*final=*/true);
  }
  // E.g. --epochs 0 evaluates the given weights.
  if (evaluator_->last().is_null() && status == RunStatus::Completed) {
    evaluator_->evaluate_unlogged(*model_, batch_.position());
  }
  return {status, summary(status, steps_done)};
}

nlohmann::json Trainer::summary(RunStatus status, int64_t steps_done) const {
  SummaryInputs inputs;
  inputs.status = status;
  inputs.steps_done = steps_done;
  inputs.samples_seen = batch_.position().samples_seen;
  inputs.epochs = batch_.position().epochs;
  inputs.start_step = start_step_;
  inputs.peak_lr = schedule_.peak_lr;
  inputs.skipped_steps = nonfinite_.skipped_total();
  inputs.stopped_at_target = evaluator_->stop_at_target();
  inputs.tokens = data_.tokens;
  nlohmann::json summary = run_summary(inputs, length_, plan_, time_, evaluator_->last());
  add_memory(summary, memory_breakdown(), out_of_memory_->history(), auto_.empty() ? MicroBatchSearch{} : auto_.front().search,
             plan_.micro_batch_size,
             config_.batch.memory_budget, device_);
  evaluator_->target().describe(summary);
  summary["precision"] = to_string(config_.run.precision);
  summary["fused_adamw"] = updater_->fused();
  summary["activation_checkpointing"] = activation_checkpointing();
  if (auto_.size() > 1) {
    nlohmann::json levers = nlohmann::json::array();
    for (const auto& candidate : auto_) {
      levers.push_back({{"activation_checkpointing", candidate.checkpointing},
                        {"micro_batch_size", candidate.micro},
                        {"peak_bytes", candidate.peak ? nlohmann::json(*candidate.peak) : nlohmann::json(nullptr)},
                        {"micro_step_seconds", candidate.seconds},
                        {"samples_per_second", candidate.seconds > 0 ? nlohmann::json(static_cast<double>(
                                                   candidate.micro * comm_.world_size()) / candidate.seconds)
                                                                     : nlohmann::json(nullptr)},
                        {"chosen", &candidate == &auto_.front()}});
    }
    summary["micro_batch_auto"]["levers"] = levers;
  }
  summary["shard_optimizer_state"] = updater_->sharded();
  if (updater_->sharded()) summary["parameter_all_gather_seconds"] = updater_->gather_seconds();
  if (noise_) add_noise_scale(summary, *noise_, time_, steps_done - start_step_);
  if (status == RunStatus::Preempted) summary["checkpoint"] = checkpoint_dir(config_) + "/" + checkpoint_name(steps_done);
  return summary;
}

}  // namespace dtrain
