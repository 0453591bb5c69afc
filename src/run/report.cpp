// The lines a run prints and the events and summary it records.
#include "run/report.h"

#include <cmath>
#include <cstdio>

namespace dtrain {

namespace {

std::string format_metric(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4f", value);
  return text;
}

// JSON has no NaN or Inf: non-finite values as text.
nlohmann::json finite_or_text(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(std::to_string(value));
}

nlohmann::json per_step_ms(double seconds, int64_t steps) {
  return steps > 0 ? nlohmann::json(1000 * seconds / static_cast<double>(steps)) : nlohmann::json(nullptr);
}

nlohmann::json field_or_null(const nlohmann::json& object, const char* key) {
  return object.contains(key) ? object.at(key) : nlohmann::json(nullptr);
}

// The breakdown's byte counts, as both the "memory" event and summary.json
// write them.
nlohmann::json memory_fields(const MemoryBreakdown& memory) {
  return {{"parameters_bytes", memory.parameters},   {"gradients_bytes", memory.gradients},
          {"optimizer_state_bytes", memory.optimizer_state}, {"other_bytes", memory.other},
          {"activations_bytes", memory.activations}, {"peak_bytes", memory.peak}};
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

double seconds_since(Throughput::Clock::time_point start) {
  return std::chrono::duration<double>(Throughput::Clock::now() - start).count();
}

void Throughput::add_step(double seconds, double items, int64_t steps_before) {
  train_seconds += seconds;
  if (steps_before >= kWarmupSteps) steady_seconds += seconds;
  interval_seconds += seconds;
  ++interval_steps;
  interval_items += items;
  run_items += items;
  run_seconds += seconds;
}

void print_plan(const BatchPlan& plan, const LrSchedule& schedule, const LrOptions& lr, const RunLength& length,
                int64_t epochs, int64_t dropped_per_epoch) {
  std::fprintf(stdout, "%s; lr %g -> %g (%s, base batch %lld)\n", plan.describe().c_str(), schedule.base_lr,
               schedule.peak_lr, to_string(lr.scaling), static_cast<long long>(lr.base_batch_size));
  const std::string stop = length.steps_to_run < length.total_steps
                               ? " (stopping after " + std::to_string(length.steps_to_run) + " by --max-steps)"
                               : "";
  std::fprintf(stdout, "%lld steps/epoch x %lld epochs = %lld steps%s; %lld samples dropped per epoch (incomplete last batch); warmup %lld steps\n",
               static_cast<long long>(length.steps_per_epoch), static_cast<long long>(epochs),
               static_cast<long long>(length.total_steps), stop.c_str(), static_cast<long long>(dropped_per_epoch),
               static_cast<long long>(schedule.warmup_steps));
  std::fflush(stdout);
}

void print_batch_schedule(const BatchOptions& options, const BatchSchedule& schedule) {
  const char* kind = schedule.adaptive() ? "adaptive" : "rampup";
  std::fprintf(stdout, "batch schedule %s: global batch %lld now, up to %lld; positions, warmup and decay count "
               "samples; the LR %s\n", kind, static_cast<long long>(schedule.global_batch()),
               static_cast<long long>(schedule.final_batch()),
               options.schedule_lr == BatchScheduleLr::Scale ? "follows the batch by its scaling rule"
                                                             : "is the final batch's throughout");
  std::fflush(stdout);
}

void report_progress(bool root, const RunPosition& position, int64_t start_step, double mean_loss, double lr, double grad_norm,
                     const NoiseScaleAverage* noise, const RunLength& length, const BatchPlan& plan, bool tokens,
                     Throughput& time, MetricsLog& log) {
  const double samples_per_second =
      static_cast<double>(time.interval_steps * plan.global_batch_size) / time.interval_seconds;
  const int64_t steps_done = position.steps_done;
  const int64_t steps_this_run = steps_done - start_step;
  const double eta = time.train_seconds / static_cast<double>(std::max<int64_t>(steps_this_run, 1)) *
                     static_cast<double>(length.steps_to_run - steps_done);
  const double epoch = position.epochs;
  nlohmann::json event = {{"event", "train"},
                          {"step", steps_done},
                          {"epoch", epoch},
                          {"samples_seen", position.samples_seen},
                          {"global_batch_size", plan.global_batch_size},
                          {"lr", lr},
                          {"train_loss", mean_loss},
                          {"grad_norm", grad_norm},
                          {"samples_per_sec", samples_per_second},
                          {"elapsed_sec", time.elapsed()}};
  std::string noise_text;
  if (noise) {
    const std::optional<double> b_simple = noise->valid_b_simple();
    event["noise_scale"] = b_simple ? nlohmann::json(*b_simple) : nlohmann::json(nullptr);
    event["noise_grad_sq"] = noise->empty() ? nlohmann::json(nullptr) : nlohmann::json(noise->grad_sq());
    event["noise_trace"] = noise->empty() ? nlohmann::json(nullptr) : nlohmann::json(noise->trace());
    if (b_simple) noise_text = " | B_simple " + std::to_string(std::llround(*b_simple));
  }
  std::string rate = std::to_string(std::llround(samples_per_second)) + " samples/s";
  if (tokens) {
    const double tokens_per_second = time.interval_items / time.interval_seconds;
    event["tokens_per_sec"] = tokens_per_second;
    rate = std::to_string(std::llround(tokens_per_second)) + " tokens/s";
  }
  log.record(event);
  if (root) {
    std::fprintf(stderr, "step %lld/%lld | epoch %.2f | loss %.4f | lr %.4g | grad norm %.3g%s | %s | eta %s\n",
                 static_cast<long long>(steps_done), static_cast<long long>(length.steps_to_run), epoch, mean_loss, lr,
                 grad_norm, noise_text.c_str(), rate.c_str(), format_duration(eta).c_str());
  }
  time.interval_seconds = 0;
  time.interval_steps = 0;
  time.interval_items = 0;
}

void report_nonfinite(bool root, int64_t steps_done, bool diverged, double step_loss, double grad_norm, double lr,
                      int64_t consecutive, int64_t skipped_total, MetricsLog& log) {
  log.record({{"event", diverged ? "diverged" : "skip"},
              {"step", steps_done},
              {"loss", finite_or_text(step_loss)},
              {"grad_norm", finite_or_text(grad_norm)},
              {"lr", lr},
              {"consecutive_skips", consecutive},
              {"skipped_steps", skipped_total}});
  if (!root) return;
  auto number = [](double value) {
    if (std::isnan(value)) return std::string("nan");
    char text[32];
    std::snprintf(text, sizeof text, "%g", value);
    return std::string(text);
  };
  if (diverged) {
    const std::string streak =
        consecutive > 1 ? " after " + std::to_string(consecutive) + " non-finite steps in a row" : "";
    std::fprintf(stderr,
                 "dtrain: error: diverged at step %lld (loss %s, gradient norm %s, lr %s)%s; lower --lr, add warmup "
                 "(--warmup-steps) or --grad-clip-norm, or continue from a checkpoint with --on-nonfinite skip\n",
                 static_cast<long long>(steps_done), number(step_loss).c_str(), number(grad_norm).c_str(),
                 number(lr).c_str(), streak.c_str());
  } else {
    std::fprintf(stderr, "step %lld: non-finite loss %s or gradient norm %s at lr %s: update skipped (%lld in a row)\n",
                 static_cast<long long>(steps_done), number(step_loss).c_str(), number(grad_norm).c_str(),
                 number(lr).c_str(), static_cast<long long>(consecutive));
  }
  std::fflush(stderr);
}

void print_eval_line(const Evaluation& evaluation, int64_t steps_done, double epoch, bool tokens) {
  const EvalResult& test = evaluation.test;
  const EvalResult& train = evaluation.train;
  const EvalResult& validation = evaluation.validation;
  std::string line;
  if (tokens) {
    char text[256];
    std::snprintf(text, sizeof text, "val loss %.4f (%.3f bits/byte, perplexity %.2f) | train-subset loss %.4f",
                  validation.loss, validation.loss / std::log(2.0), std::exp(validation.loss), train.loss);
    line = evaluation.has_validation ? text : "train-subset loss " + format_metric(train.loss);
  } else if (evaluation.complete) {
    const std::string val = evaluation.has_validation ? " | val acc " + format_metric(validation.accuracy) +
                                                            " loss " + format_metric(validation.loss)
                                                      : "";
    char text[256];
    std::snprintf(text, sizeof text, "test acc %.4f loss %.4f%s | train-subset acc %.4f loss %.4f | gap %+.4f",
                  test.accuracy, test.loss, val.c_str(), train.accuracy, train.loss, train.accuracy - test.accuracy);
    line = text;
  } else {  // --eval-splits target: the one split read
    const auto& [name, result] = evaluation.has_test         ? std::pair<const char*, const EvalResult&>{"test", test}
                                 : evaluation.has_validation ? std::pair<const char*, const EvalResult&>{"val", validation}
                                                             : std::pair<const char*, const EvalResult&>{"train-subset", train};
    line = std::string(name) + " acc " + format_metric(result.accuracy) + " loss " + format_metric(result.loss) +
           " (--eval-splits target)";
  }
  std::fprintf(stdout, "eval step %lld (epoch %.2f): %s\n", static_cast<long long>(steps_done), epoch, line.c_str());
  std::fflush(stdout);
}

void print_target_line(const StudyOptions& study, int64_t steps_done, int64_t samples_seen) {
  std::fprintf(stdout, "target %s reached at step %lld (%lld samples)%s\n", study.target.metric.c_str(),
               static_cast<long long>(steps_done), static_cast<long long>(samples_seen),
               study.stop_at_target ? "; stopping (--stop-at-target)" : "");
  std::fflush(stdout);
}

void report_memory(bool root, const MemoryBreakdown& memory, int64_t step, int64_t micro_batch, MetricsLog& log) {
  if (!memory.measured) return;
  nlohmann::json event = memory_fields(memory);
  event["event"] = "memory";
  event["step"] = step;
  log.record(event);
  if (!root) return;
  std::fprintf(stdout, "memory per rank (rank 0, first step, micro-batch %lld): %s\n",
               static_cast<long long>(micro_batch), describe(memory).c_str());
  std::fflush(stdout);
}

nlohmann::json run_summary(const SummaryInputs& inputs, const RunLength& length, const BatchPlan& plan,
                           const Throughput& time, const nlohmann::json& last_eval) {
  const int64_t steps_done = inputs.steps_done;
  const int64_t steps_this_run = steps_done - inputs.start_step;
  nlohmann::json summary = {
      {"status", to_string(inputs.status)},
      {"steps", steps_done},
      {"resumed_from_step", inputs.start_step},
      {"schedule_steps", length.total_steps},
      {"epochs", inputs.epochs},
      {"samples_seen", inputs.samples_seen},
      {"peak_lr", inputs.peak_lr},
      {"train_seconds", time.train_seconds},
      {"steady_ms_per_step", per_step_ms(time.steady_seconds, steps_this_run - Throughput::kWarmupSteps)},
      {"agreement_ms_per_step", per_step_ms(time.agreement_seconds, steps_this_run)},
      {"nonfinite_check_ms_per_step", per_step_ms(time.nonfinite_check_seconds, steps_this_run)},
      {"skipped_steps", inputs.skipped_steps},
      {"wall_seconds", time.elapsed()},
      {"samples_per_sec",
       time.train_seconds > 0 ? static_cast<double>(inputs.samples_seen) / time.train_seconds : 0.0},
      {"stopped_at_target", inputs.stopped_at_target},
  };
  plan.add_to(summary);
  for (const char* key : {"test_accuracy", "test_loss", "train_eval_accuracy", "train_eval_loss", "generalization_gap"}) {
    summary[key] = field_or_null(last_eval, key);
  }
  if (last_eval.contains("val_accuracy")) {
    summary["val_accuracy"] = last_eval["val_accuracy"];
    summary["val_loss"] = last_eval["val_loss"];
  }
  if (inputs.tokens) {
    for (const char* key : {"val_bits_per_byte", "val_perplexity", "train_eval_bits_per_byte"}) {
      summary[key] = field_or_null(last_eval, key);
    }
    summary["tokens_per_sec"] = time.run_seconds > 0 ? time.run_items / time.run_seconds : 0.0;
  }
  return summary;
}

void add_memory(nlohmann::json& summary, const MemoryBreakdown& memory, const nlohmann::json& out_of_memory_history,
                const MicroBatchSearch& auto_search, int64_t chosen_micro, int64_t memory_budget,
                const c10::Device& device) {
  if (!out_of_memory_history.empty()) summary["out_of_memory"] = out_of_memory_history;
  if (auto_search.budget > 0) {
    nlohmann::json tried = nlohmann::json::array();
    for (const auto& probed : auto_search.tried) {
      tried.push_back({{"micro_batch_size", probed.micro},
                       {"peak_bytes", probed.peak ? nlohmann::json(*probed.peak) : nlohmann::json(nullptr)},
                       {"fits", probed.fits}});
    }
    summary["micro_batch_auto"] = {{"budget_bytes", auto_search.budget}, {"chosen", chosen_micro}, {"tried", tried}};
  }
  if (!memory.measured) return;
  summary["memory"] = memory_fields(memory);
  summary["memory"]["device"] = device.str();
  if (memory_budget > 0) summary["memory"]["budget_bytes"] = memory_budget;
  if (device.is_cuda()) summary["peak_device_memory_bytes"] = memory.peak;
}

void add_noise_scale(nlohmann::json& summary, const NoiseScaleAverage& noise, const Throughput& time,
                     int64_t steps_this_run) {
  const std::optional<double> b_simple = noise.valid_b_simple();
  summary["noise_scale"] = b_simple ? nlohmann::json(*b_simple) : nlohmann::json(nullptr);
  summary["noise_scale_ms_per_step"] = per_step_ms(time.noise_seconds, steps_this_run);
}

}  // namespace dtrain
