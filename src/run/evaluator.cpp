// Evaluation in chunks on the training device, sums all-reduced; the "eval"
// event with its generalization gap; the schedule and the target.
#include "run/evaluator.h"

#include "comm/watchdog.h"
#include "common/error.h"
#include "models/precision.h"
#include "run/report.h"

#include <torch/torch.h>

#include <cmath>

namespace dtrain {

Evaluator::Evaluator(const Config& config, const Dataset& data, Communicator& comm, c10::Device device)
    : config_(config), data_(data), comm_(comm), device_(device), target_(config.study.target) {
  // Checked here rather than with the options: each is a valid setting alone.
  if (config_.study.stop_at_target && !target_.enabled()) {
    throw UsageError("--stop-at-target needs --target METRIC:VALUE (e.g. --target val_accuracy:0.88)");
  }
  if (target_.enabled() && config_.study.target.metric.rfind("test_", 0) == 0 && data_.test.size() == 0) {
    throw UsageError("--target " + config_.study.target.metric + " needs a test split, and " + data_.name +
                     " has none: use val_loss or val_bits_per_byte with --validation-size N");
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
    train_shard_.push_back(subset[position]);
  }
}

std::vector<double> Evaluator::all_reduce_sums(const std::vector<double>& values) {
  // On the training device, so the NCCL backend can take it too.
  auto sums = torch::tensor(values, torch::kDouble).to(device_);
  CollectiveWatchdog::Scope watched(comm_.watchdog(), "evaluation all-reduce");
  comm_.all_reduce(sums);
  sums = sums.cpu();
  return std::vector<double>(sums.data_ptr<double>(), sums.data_ptr<double>() + sums.numel());
}

EvalResult Evaluator::evaluate(Model& model, const Split& split, const std::vector<int64_t>& indices) {
  torch::NoGradGuard no_grad;
  model.eval();
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
    const auto targets = split.targets.index_select(0, index_tensor).to(device_);
    torch::Tensor logits, loss;
    {
      const PrecisionScope precision(config_.run.precision, device_.type());  // as in training
      logits = model.forward(split.inputs.index_select(0, index_tensor).to(device_));
      loss = summed_cross_entropy(logits, targets);
    }
    loss_sum += loss.item<double>();
    // In fp32 for the argmax: bf16 logits would tie more often.
    const bool reduced = logits.scalar_type() == torch::kBFloat16 || logits.scalar_type() == torch::kHalf;
    correct += (reduced ? logits.to(torch::kFloat) : logits).argmax(-1).eq(targets).sum().item<int64_t>();  // a -1 target is never a class
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

Evaluation Evaluator::evaluate_all(Model& model, bool all) {
  // Text datasets have no test split: their held-out documents are the validation split.
  Evaluation evaluation;
  evaluation.has_test = data_.test.size() > 0;
  evaluation.has_validation = data_.validation.size() > 0;
  if (!all && config_.study.eval_splits == EvalSplits::Target && target_.enabled()) {
    const std::string& metric = config_.study.target.metric;
    const bool test = metric.rfind("test_", 0) == 0, validation = metric.rfind("val_", 0) == 0;
    evaluation.has_test = evaluation.has_test && test;
    evaluation.has_validation = evaluation.has_validation && validation;
    evaluation.has_train = !test && !validation;
    evaluation.complete = false;
  }
  if (evaluation.has_test) evaluation.test = evaluate(model, data_.test, test_shard_);
  if (evaluation.has_train) evaluation.train = evaluate(model, data_.train, train_shard_);
  if (evaluation.has_validation) evaluation.validation = evaluate(model, data_.validation, validation_shard_);
  return evaluation;
}

nlohmann::json Evaluator::event(const Evaluation& evaluation, const RunPosition& position) const {
  const EvalResult& train = evaluation.train;
  nlohmann::json event = {
      {"event", "eval"},
      {"step", position.steps_done},
      {"epoch", position.epochs},
      {"samples_seen", position.samples_seen},
      {"splits", evaluation.complete ? "all" : "target"},
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
  if (evaluation.has_test) add("test", evaluation.test);
  if (evaluation.has_train) {
    event["train_eval_loss"] = train.loss;
    event["train_eval_accuracy"] = train.accuracy;
    event["train_eval_samples"] = train.samples;
  }
  if (evaluation.has_validation) add("val", evaluation.validation);
  // Classification: train-subset accuracy minus test accuracy; text: held-out
  // loss minus train-subset loss (nats per token).
  if (evaluation.has_train && evaluation.has_test) {
    event["generalization_gap"] = train.accuracy - evaluation.test.accuracy;
  } else if (evaluation.has_train && data_.tokens && evaluation.has_validation) {
    event["generalization_gap"] = evaluation.validation.loss - train.loss;
  }
  return event;
}

bool Evaluator::due(const RunPosition& position) const {
  return evaluation_due(position.steps_done, position.epoch_ended, config_.run.eval_every,
                        config_.study.eval_per_doubling);
}

void Evaluator::evaluate_unlogged(Model& model, const RunPosition& position) {
  const Evaluation evaluation = evaluate_all(model);
  last_ = event(evaluation, position);
  if (comm_.rank() == 0) print_eval_line(evaluation, position.steps_done, position.epochs, data_.tokens);
}

void Evaluator::evaluate_and_log(Model& model, const RunPosition& position, double elapsed_seconds, MetricsLog& log,
                                 bool final) {
  const int64_t steps_done = position.steps_done;
  const int64_t samples_seen = position.samples_seen;
  Evaluation evaluation = evaluate_all(model, final);
  last_ = event(evaluation, position);
  const bool reached_now = target_.observe(last_, steps_done, samples_seen);
  // A run that stops here ends with every split read, for its summary.
  if (reached_now && config_.study.stop_at_target && !evaluation.complete) {
    evaluation = evaluate_all(model, /*all=*/true);
    last_ = event(evaluation, position);
  }
  if (comm_.rank() == 0) print_eval_line(evaluation, steps_done, position.epochs, data_.tokens);
  last_["elapsed_sec"] = elapsed_seconds;
  log.record(last_);
  if (!reached_now) return;
  nlohmann::json reached = {{"event", "target"}, {"step", steps_done}};
  target_.describe(reached);
  log.record(reached);
  if (comm_.rank() == 0) print_target_line(config_.study, steps_done, samples_seen);
  stop_at_target_ = config_.study.stop_at_target;
}

bool Evaluator::complete_at(int64_t steps_done) const {
  return !last_.is_null() && last_.value("step", int64_t{-1}) == steps_done && last_.value("splits", "all") == "all";
}

void Evaluator::restore(const nlohmann::json& last_eval, const nlohmann::json& target_state,
                        const std::function<void(const std::string& other_target)>& warn) {
  last_ = last_eval;
  if (!target_.restore(target_state)) warn(target_state.at("target").get<std::string>());
  stop_at_target_ = config_.study.stop_at_target && target_.reached();
}

}  // namespace dtrain
