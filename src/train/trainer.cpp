#include "train/trainer.h"

#include "common/error.h"
#include "data/sampler.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>

namespace dtrain {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerOptions& options,
                                                        std::vector<torch::Tensor> parameters, double lr) {
  switch (options.kind) {
    case OptimizerKind::Sgd:
      return std::make_unique<torch::optim::SGD>(parameters, torch::optim::SGDOptions(lr)
                                                                 .momentum(options.momentum)
                                                                 .nesterov(options.nesterov)
                                                                 .weight_decay(options.weight_decay));
    case OptimizerKind::AdamW:
      return std::make_unique<torch::optim::AdamW>(parameters, torch::optim::AdamWOptions(lr)
                                                                   .betas({options.betas.at(0), options.betas.at(1)})
                                                                   .eps(options.eps)
                                                                   .weight_decay(options.weight_decay));
  }
  throw Error("unknown optimizer");
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

torch::Tensor as_index_tensor(const std::vector<int64_t>& indices) {
  return torch::from_blob(const_cast<int64_t*>(indices.data()), {static_cast<int64_t>(indices.size())},
                          torch::kLong);
}

}  // namespace

Trainer::Trainer(const Config& config, const BatchPlan& plan, Communicator& comm, const Dataset& data,
                 std::shared_ptr<Classifier> model)
    : config_(config), plan_(plan), comm_(comm), data_(data), model_(std::move(model)) {
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

  const std::vector<torch::Tensor> parameters = trainable_parameters(*model_);
  device_ = parameters.front().device();
  local_loss_sum_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device_));
  reducer_ = std::make_unique<GradientReducer>(parameters, comm_, reducer_options(config_.distributed));
  optimizer_ = make_optimizer(config_.optimizer, parameters, schedule_.at(0));

  test_shard_ = eval_shard(data_.test.size(), comm_.rank(), comm_.world_size());
  const auto subset = fixed_subset(data_.train.size(), data_.test.size(), config_.run.seed);
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

StepResult Trainer::train_step(int64_t step, bool compute_grad_norm) {
  const int64_t epoch = step / steps_per_epoch_;
  const int64_t step_in_epoch = step % steps_per_epoch_;
  if (epoch != permutation_epoch_) {
    permutation_ = epoch_permutation(data_.train.size(), config_.run.seed, epoch, config_.run.shuffle);
    permutation_epoch_ = epoch;
  }
  StepResult result;
  result.lr = schedule_.at(step);
  for (auto& group : optimizer_->param_groups()) group.options().set_lr(result.lr);

  model_->train();
  reducer_->zero_grad();
  // The normalizer is the number of loss items in the whole global batch (here
  // one per sample; a token-weighted loss will count tokens), so summing the
  // ranks' gradients gives exactly the gradient of the global mean.
  const double loss_items_per_step = static_cast<double>(plan_.global_batch_size);
  for (int64_t micro_step = 0; micro_step < plan_.grad_accum_steps; ++micro_step) {
    const auto indices = micro_batch_indices(permutation_, plan_, step_in_epoch, micro_step, comm_.rank());
    const auto index_tensor = as_index_tensor(indices);
    const auto inputs = data_.train.inputs.index_select(0, index_tensor).to(device_);
    const auto targets = data_.train.targets.index_select(0, index_tensor).to(device_);
    reducer_->begin_micro_step(micro_step == plan_.grad_accum_steps - 1);
    const auto logits = model_->forward(inputs);
    const auto loss =
        torch::nn::functional::cross_entropy(
            logits, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)) /
        loss_items_per_step;
    loss.backward();
    // Summed on the device; read only when logged, so no host sync per step.
    local_loss_sum_ += loss.detach().to(torch::kDouble);
  }
  ++loss_steps_;

  reducer_->finish();
  if (compute_grad_norm || config_.optimizer.grad_clip_norm > 0) {
    result.grad_norm = reducer_->grad_norm();
    const double clip = config_.optimizer.grad_clip_norm;
    // A non-finite norm never scales: it would turn every gradient into 0 or NaN.
    if (clip > 0 && std::isfinite(result.grad_norm) && result.grad_norm > clip) {
      reducer_->scale(clip / (result.grad_norm + 1e-6));
    }
  }
  optimizer_->step();
  return result;
}

std::vector<double> Trainer::all_reduce_sums(const std::vector<double>& values) {
  // On the training device, so the NCCL backend can take it too.
  auto sums = torch::tensor(values, torch::kDouble).to(device_);
  comm_.all_reduce(sums);
  sums = sums.cpu();
  return std::vector<double>(sums.data_ptr<double>(), sums.data_ptr<double>() + sums.numel());
}

double Trainer::take_mean_train_loss() {
  auto sum = local_loss_sum_.reshape({1}).clone();
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
  double loss_sum = 0;
  int64_t correct = 0;
  for (size_t start = 0; start < indices.size(); start += kChunk) {
    const int64_t count = std::min<int64_t>(kChunk, static_cast<int64_t>(indices.size() - start));
    const auto index_tensor =
        torch::from_blob(const_cast<int64_t*>(indices.data() + start), {count}, torch::kLong);
    const auto logits = model_->forward(split.inputs.index_select(0, index_tensor).to(device_));
    const auto targets = split.targets.index_select(0, index_tensor).to(device_);
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    correct += logits.argmax(1).eq(targets).sum().item<int64_t>();
  }
  const auto sums = all_reduce_sums({loss_sum, static_cast<double>(correct), static_cast<double>(indices.size())});
  EvalResult result;
  result.samples = static_cast<int64_t>(sums[2]);
  result.loss = sums[0] / static_cast<double>(result.samples);
  result.accuracy = sums[1] / static_cast<double>(result.samples);
  return result;
}

nlohmann::json Trainer::evaluate_all(int64_t steps_done) {
  const EvalResult test = evaluate(data_.test, test_shard_);
  const EvalResult train = evaluate(data_.train, train_eval_shard_);
  nlohmann::json event = {
      {"event", "eval"},
      {"step", steps_done},
      {"epoch", static_cast<double>(steps_done) / static_cast<double>(steps_per_epoch_)},
      {"samples_seen", steps_done * plan_.global_batch_size},
      {"test_loss", test.loss},
      {"test_accuracy", test.accuracy},
      {"test_samples", test.samples},
      {"train_eval_loss", train.loss},
      {"train_eval_accuracy", train.accuracy},
      {"train_eval_samples", train.samples},
      {"generalization_gap", train.accuracy - test.accuracy},
  };
  if (is_root()) {
    std::fprintf(stdout, "eval step %lld (epoch %.2f): test acc %.4f loss %.4f | train-subset acc %.4f loss %.4f | gap %+.4f\n",
                 static_cast<long long>(steps_done), event["epoch"].get<double>(), test.accuracy, test.loss,
                 train.accuracy, train.loss, train.accuracy - test.accuracy);
    std::fflush(stdout);
  }
  return event;
}

nlohmann::json Trainer::run(MetricsLog& log) {
  const auto run_start = Clock::now();
  const int64_t global_batch = plan_.global_batch_size;
  if (is_root()) {
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

  double train_seconds = 0;        // excludes evaluation
  double steady_seconds = 0;       // the same, past the first kWarmupSteps (allocator and cache warm-up)
  constexpr int64_t kWarmupSteps = 20;
  double interval_seconds = 0;
  int64_t interval_steps = 0;
  nlohmann::json last_eval;
  for (int64_t step = 0; step < steps_to_run_; ++step) {
    const bool log_now = (step + 1) % config_.run.log_every == 0 || step + 1 == steps_to_run_;
    const auto step_start = Clock::now();
    const StepResult result = train_step(step, log_now);
    const double step_seconds = seconds_since(step_start);
    train_seconds += step_seconds;
    if (step >= kWarmupSteps) steady_seconds += step_seconds;
    interval_seconds += step_seconds;
    ++interval_steps;
    const int64_t steps_done = step + 1;

    if (log_now) {
      const double loss = take_mean_train_loss();
      const double samples_per_second = static_cast<double>(interval_steps * global_batch) / interval_seconds;
      const double eta = train_seconds / static_cast<double>(steps_done) * static_cast<double>(steps_to_run_ - steps_done);
      const double epoch = static_cast<double>(steps_done) / static_cast<double>(steps_per_epoch_);
      log.record({{"event", "train"},
                  {"step", steps_done},
                  {"epoch", epoch},
                  {"samples_seen", steps_done * global_batch},
                  {"lr", result.lr},
                  {"train_loss", loss},
                  {"grad_norm", result.grad_norm},
                  {"samples_per_sec", samples_per_second},
                  {"elapsed_sec", seconds_since(run_start)}});
      if (is_root()) {
        std::fprintf(stderr, "step %lld/%lld | epoch %.2f | loss %.4f | lr %.4g | grad norm %.3g | %.0f samples/s | eta %s\n",
                     static_cast<long long>(steps_done), static_cast<long long>(steps_to_run_), epoch, loss, result.lr,
                     result.grad_norm, samples_per_second, format_duration(eta).c_str());
      }
      interval_seconds = 0;
      interval_steps = 0;
    }
    const bool end_of_epoch = steps_done % steps_per_epoch_ == 0;
    const bool eval_now = end_of_epoch || steps_done == steps_to_run_ ||
                          (config_.run.eval_every > 0 && steps_done % config_.run.eval_every == 0);
    if (eval_now) {
      last_eval = evaluate_all(steps_done);
      last_eval["elapsed_sec"] = seconds_since(run_start);
      log.record(last_eval);
    }
  }
  if (steps_to_run_ == 0) last_eval = evaluate_all(0);  // e.g. --epochs 0: evaluate given weights

  nlohmann::json summary = {
      {"steps", steps_to_run_},
      {"schedule_steps", total_steps_},
      {"epochs", static_cast<double>(steps_to_run_) / static_cast<double>(steps_per_epoch_)},
      {"samples_seen", steps_to_run_ * global_batch},
      {"global_batch_size", global_batch},
      {"micro_batch_size", plan_.micro_batch_size},
      {"grad_accum_steps", plan_.grad_accum_steps},
      {"world_size", plan_.world_size},
      {"peak_lr", schedule_.peak_lr},
      {"train_seconds", train_seconds},
      {"steady_ms_per_step",
       steps_to_run_ > kWarmupSteps
           ? nlohmann::json(1000 * steady_seconds / static_cast<double>(steps_to_run_ - kWarmupSteps))
           : nlohmann::json(nullptr)},
      {"wall_seconds", seconds_since(run_start)},
      {"samples_per_sec", train_seconds > 0 ? static_cast<double>(steps_to_run_ * global_batch) / train_seconds : 0.0},
      {"test_accuracy", last_eval["test_accuracy"]},
      {"test_loss", last_eval["test_loss"]},
      {"train_eval_accuracy", last_eval["train_eval_accuracy"]},
      {"train_eval_loss", last_eval["train_eval_loss"]},
      {"generalization_gap", last_eval["generalization_gap"]},
  };
  return summary;
}

}  // namespace dtrain
