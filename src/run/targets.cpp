// The evaluation schedule and the first evaluation that meets --target.
#include "run/targets.h"

#include "common/error.h"

#include <cmath>
#include <cstdio>

namespace dtrain {

namespace {

// Grid points 2^(j/K) at or below `steps`, for steps >= 1.
int64_t grid_points_up_to(int64_t steps, int64_t per_doubling) {
  // log2 of a power of two is exact, so the points 2^m land on their steps.
  return static_cast<int64_t>(std::floor(static_cast<double>(per_doubling) * std::log2(static_cast<double>(steps)))) + 1;
}

// The eval event's key for a --target metric (train_* are the fixed train subset's).
std::string event_key(const std::string& metric) {
  if (metric.rfind("train_", 0) == 0) return "train_eval_" + metric.substr(6);
  return metric;
}

}  // namespace

bool evaluation_due(int64_t steps_done, bool epoch_ended, int64_t eval_every, int64_t per_doubling) {
  if (steps_done <= 0) return false;
  if (epoch_ended) return true;
  if (eval_every > 0 && steps_done % eval_every == 0) return true;
  // A grid point in (steps_done - 1, steps_done]: step 1 holds 2^0.
  return per_doubling > 0 &&
         (steps_done == 1 || grid_points_up_to(steps_done, per_doubling) > grid_points_up_to(steps_done - 1, per_doubling));
}

bool TargetTracker::observe(const nlohmann::json& eval_event, int64_t steps_done, int64_t samples_seen) {
  if (!enabled() || reached()) return false;
  const auto found = eval_event.find(event_key(target_.metric));
  if (found == eval_event.end() || !found->is_number()) return false;
  const double value = found->get<double>();
  const bool met = target_.lower_is_better() ? value <= target_.value : value >= target_.value;
  if (!met) return false;
  steps_ = steps_done;
  samples_ = samples_seen;
  return true;
}

std::string TargetTracker::text() const {
  char number[32];
  std::snprintf(number, sizeof number, "%.17g", target_.value);
  return target_.metric + ":" + number;
}

void TargetTracker::describe(nlohmann::json& summary) const {
  if (!enabled()) return;
  summary["target"] = {{"metric", target_.metric}, {"value", target_.value}};
  summary["target_reached"] = reached();
  summary["steps_to_target"] = reached() ? nlohmann::json(steps_) : nlohmann::json(nullptr);
  summary["samples_to_target"] = reached() ? nlohmann::json(samples_) : nlohmann::json(nullptr);
}

nlohmann::json TargetTracker::state() const {
  if (!enabled()) return nullptr;
  return {{"target", text()}, {"steps", steps_}, {"samples", samples_}};
}

bool TargetTracker::restore(const nlohmann::json& state) {
  if (!enabled() || state.is_null()) return true;
  if (state.at("target").get<std::string>() != text()) return false;
  steps_ = state.at("steps").get<int64_t>();
  samples_ = state.at("samples").get<int64_t>();
  return true;
}

}  // namespace dtrain
