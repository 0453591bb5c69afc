#include "plan/plan_model.h"

#include "common/error.h"
#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <sstream>

namespace dtrain {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Least squares of sum_i (1 - u_i a - v_i b)^2 over a, b >= 0 (the relative
// residuals of both fits here, with u, v the rows of the design).
std::pair<double, double> nonnegative_least_squares(const std::vector<double>& u, const std::vector<double>& v) {
  double uu = 0, uv = 0, vv = 0, u1 = 0, v1 = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    uu += u[i] * u[i];
    uv += u[i] * v[i];
    vv += v[i] * v[i];
    u1 += u[i];
    v1 += v[i];
  }
  const double det = uu * vv - uv * uv;
  double a = det != 0 ? (u1 * vv - v1 * uv) / det : 0;
  double b = det != 0 ? (v1 * uu - u1 * uv) / det : 0;
  if (det == 0 || b < 0) {
    a = uu > 0 ? u1 / uu : 0;
    b = 0;
  }
  if (a <= 0) {
    a = 0;
    b = vv > 0 ? v1 / vv : 0;
  }
  return {a, b};
}

double steps_of(const StepsFit& fit, double batch) {
  // s_min (1 + b_crit / B) = s_min + e_min / B, also where s_min is 0.
  if (std::isinf(fit.b_crit)) return fit.s_min + fit.e_min / batch;
  return fit.s_min + fit.s_min * fit.b_crit / batch;
}

double percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const double at = q * static_cast<double>(values.size() - 1);
  const size_t low = static_cast<size_t>(std::floor(at));
  const size_t high = std::min(values.size() - 1, low + 1);
  return values[low] + (values[high] - values[low]) * (at - static_cast<double>(low));
}

nlohmann::json finite_or_null(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr); }

}  // namespace

StepsFit fit_steps_to_target(const std::vector<std::pair<double, double>>& batch_steps) {
  std::vector<double> u, v;
  for (const auto& [batch, steps] : batch_steps) {
    u.push_back(1 / steps);
    v.push_back(1 / (steps * batch));
  }
  const auto [a, b] = nonnegative_least_squares(u, v);
  StepsFit fit;
  fit.s_min = a;
  fit.e_min = b;
  // No plateau (a = 0): S = b / B, B_crit infinite (aggregate.py's "no plateau").
  fit.b_crit = a > 0 ? b / a : kInf;
  return fit;
}

double StepsModel::steps(double batch) const { return steps_of(fit, batch); }

std::pair<double, double> StepsModel::interval(double batch) const {
  if (draws.empty()) return {steps(batch), steps(batch)};
  std::vector<double> values;
  for (size_t i = 0; i < draws.size(); ++i) {
    values.push_back(steps_of(draws[i], batch) * (i < scatter.size() ? scatter[i] : 1.0));
  }
  if (source == Source::NoiseScale) {
    values.push_back(steps(batch));
    return {*std::min_element(values.begin(), values.end()), *std::max_element(values.begin(), values.end())};
  }
  return {percentile(values, 0.025), percentile(values, 0.975)};
}

StepsModel steps_model_from_points(const std::vector<std::pair<double, double>>& points, double low, double high,
                                   int draws, uint64_t seed) {
  StepsModel model;
  for (const auto& point : points) {
    if (point.first >= low && point.first <= high && point.second > 0) model.points.push_back(point);
  }
  std::vector<double> batches;
  for (const auto& point : model.points) batches.push_back(point.first);
  std::sort(batches.begin(), batches.end());
  if (std::unique(batches.begin(), batches.end()) - batches.begin() < 2) {
    throw UsageError("the steps-to-target fit needs points at two or more global batches between " +
                     std::to_string(std::llround(low)) + " and " + std::to_string(std::llround(high)) +
                     "; widen --fit-batches or give a study's fit.json with more points");
  }
  model.fit = fit_steps_to_target(model.points);
  if (std::isinf(model.fit.b_crit)) {
    model.warning = "the fit sees no plateau (steps halve with each doubling throughout its points): S_min and B_crit "
                    "are unknown, and above its largest batch the plan assumes perfect scaling; add points at larger "
                    "batches";
  } else if (batches.back() < model.fit.b_crit) {
    char text[320];
    std::snprintf(text, sizeof text,
                  "the fit's largest batch (%.0f) lies below its B_crit (%.0f): S_min is extrapolated, and the "
                  "intervals, from the residuals given the model, understate that (docs/studies.md: such a fit of the "
                  "shipped study was 36-72%% optimistic at 1024-8192); add points above B_crit",
                  batches.back(), model.fit.b_crit);
    model.warning = text;
  }
  // The bootstrap: each point's steps times a relative residual drawn with
  // replacement from the fit's, then refitted.
  std::vector<double> ratios;
  for (const auto& [batch, steps] : model.points) ratios.push_back(steps / steps_of(model.fit, batch));
  std::mt19937_64 generator(seed);
  std::uniform_int_distribution<size_t> pick(0, ratios.size() - 1);
  for (int draw = 0; draw < draws; ++draw) {
    std::vector<std::pair<double, double>> resampled;
    for (const auto& point : model.points) {
      resampled.emplace_back(point.first, steps_of(model.fit, point.first) * ratios[pick(generator)]);
    }
    model.draws.push_back(fit_steps_to_target(resampled));
    model.scatter.push_back(ratios[pick(generator)]);
  }
  return model;
}

StepsModel steps_model_from_noise_scale(double b_simple, double low, double high, double current_batch) {
  StepsModel model;
  model.source = StepsModel::Source::NoiseScale;
  auto relative = [&](double b_crit) {
    StepsFit fit;
    fit.b_crit = b_crit;
    fit.s_min = 1 / (1 + b_crit / current_batch);
    return fit;
  };
  model.fit = relative(b_simple);
  for (const double end : {low, high}) {
    if (std::isfinite(end) && end > 0) model.draws.push_back(relative(end));
  }
  return model;
}

double all_reduce_seconds(const NetworkModel& network, int64_t world, double bytes) {
  if (world <= 1) return 0;
  auto ring = [](const LinkCost& link, double ranks, double payload) {
    return 2 * (ranks - 1) * link.alpha + 2 * (ranks - 1) / ranks * payload * link.beta;
  };
  const int64_t per_node = std::max<int64_t>(1, network.ranks_per_node);
  if (world <= per_node) return ring(network.intra, static_cast<double>(world), bytes);
  const double nodes = std::ceil(static_cast<double>(world) / static_cast<double>(per_node));
  const double local = static_cast<double>(per_node);
  return ring(network.intra, local, bytes) + ring(network.inter, nodes, bytes / local);
}

LinkCost fit_ring(const std::vector<std::pair<double, double>>& bytes_seconds, int64_t world) {
  std::vector<double> u, v;
  for (const auto& [bytes, seconds] : bytes_seconds) {
    u.push_back(1 / seconds);
    v.push_back(bytes / seconds);
  }
  const auto [a, b] = nonnegative_least_squares(u, v);
  const double w = static_cast<double>(std::max<int64_t>(world, 2));
  return {a / (2 * (w - 1)), b * w / (2 * (w - 1))};
}

std::optional<PlanRow> plan_row(const StepsModel& steps, const ComputeModel& compute, const NetworkModel& network,
                                double gradient_bytes, int64_t global_batch, int64_t ranks) {
  if (global_batch % ranks != 0) return std::nullopt;
  const int64_t local = global_batch / ranks;
  const double comm = all_reduce_seconds(network, ranks, gradient_bytes);
  std::optional<PlanRow> best;
  for (const auto& [micro, seconds] : compute.micro_seconds) {
    if (micro > local || local % micro != 0) continue;
    PlanRow row;
    row.global_batch = global_batch;
    row.ranks = ranks;
    row.micro = micro;
    row.accum = local / micro;
    row.compute_seconds = static_cast<double>(row.accum) * seconds + compute.update_seconds;
    row.exposed_comm_seconds = comm - network.overlap * std::min(comm, seconds);
    row.step_seconds = row.compute_seconds + row.exposed_comm_seconds;
    // Ties (a compute model linear in the micro-batch) go to the larger micro-batch: fewer micro-steps.
    if (!best || row.step_seconds <= best->step_seconds * (1 + 1e-9)) best = row;
  }
  if (!best) return std::nullopt;
  const double b = static_cast<double>(global_batch);
  best->steps = steps.steps(b);
  std::tie(best->steps_low, best->steps_high) = steps.interval(b);
  best->time_to_target = best->steps * best->step_seconds;
  best->samples_to_target = best->steps * b;
  best->rank_seconds = best->time_to_target * static_cast<double>(ranks);
  return best;
}

namespace {

nlohmann::json row_json(const PlanRow& row) {
  return {{"global_batch_size", row.global_batch},
          {"ranks", row.ranks},
          {"micro_batch_size", row.micro},
          {"grad_accum_steps", row.accum},
          {"steps_to_target", finite_or_null(row.steps)},
          {"steps_to_target_interval", {finite_or_null(row.steps_low), finite_or_null(row.steps_high)}},
          {"step_seconds", row.step_seconds},
          {"compute_seconds", row.compute_seconds},
          {"exposed_communication_seconds", row.exposed_comm_seconds},
          {"time_to_target_seconds", finite_or_null(row.time_to_target)},
          {"samples_to_target", finite_or_null(row.samples_to_target)},
          {"rank_seconds_to_target", finite_or_null(row.rank_seconds)}};
}

nlohmann::json recommendation(const PlanRow& row, const LrOptions& lr, const std::string& why) {
  nlohmann::json out = row_json(row);
  out["peak_lr"] = scaled_peak_lr(lr.lr, row.global_batch, lr.base_batch_size, lr.scaling);
  out["lr_rule"] = std::string(to_string(lr.scaling)) + " from " + std::to_string(lr.base_batch_size);
  out["why"] = why;
  return out;
}

std::string seconds_text(double seconds) {
  char text[32];
  if (!std::isfinite(seconds)) return "-";
  if (seconds < 1) {
    std::snprintf(text, sizeof text, "%.3gs", seconds);
  } else if (seconds < 120) {
    std::snprintf(text, sizeof text, "%.1fs", seconds);
  } else if (seconds < 7200) {
    std::snprintf(text, sizeof text, "%.1fm", seconds / 60);
  } else {
    std::snprintf(text, sizeof text, "%.1fh", seconds / 3600);
  }
  return text;
}

}  // namespace

nlohmann::json make_plan(const StepsModel& steps, const ComputeModel& compute, const NetworkModel& network,
                         double gradient_bytes, const PlanRequest& request) {
  std::vector<int64_t> rank_counts;
  for (int64_t w = 1; w < request.max_ranks; w *= 2) rank_counts.push_back(w);
  rank_counts.push_back(request.max_ranks);
  std::vector<PlanRow> rows;
  for (int64_t b = 1; b <= request.batch_high; b *= 2) {
    if (b < request.batch_low) continue;
    for (const int64_t w : rank_counts) {
      if (const auto row = plan_row(steps, compute, network, gradient_bytes, b, w)) rows.push_back(*row);
    }
  }
  if (rows.empty()) {
    throw UsageError("no global batch in " + std::to_string(request.batch_low) + ".." +
                     std::to_string(request.batch_high) + " splits into the probed micro-batches on up to " +
                     std::to_string(request.max_ranks) + " ranks; widen --batches");
  }
  nlohmann::json plan;
  plan["steps_model"] = {{"source", steps.relative() ? "noise_scale" : "fit"},
                         {"describe", steps.describe},
                         {"s_min", finite_or_null(steps.fit.s_min)},
                         {"b_crit", finite_or_null(steps.fit.b_crit)},
                         {"relative", steps.relative()},
                         {"draws", steps.draws.size()}};
  if (!steps.warning.empty()) plan["steps_model"]["warning"] = steps.warning;
  if (!steps.relative() && !steps.draws.empty()) {
    std::vector<double> s_min, b_crit;
    for (const auto& draw : steps.draws) {
      s_min.push_back(draw.s_min);
      b_crit.push_back(draw.b_crit);
    }
    plan["steps_model"]["s_min_interval"] = {percentile(s_min, 0.025), percentile(s_min, 0.975)};
    plan["steps_model"]["b_crit_interval"] = {finite_or_null(percentile(b_crit, 0.025)),
                                              finite_or_null(percentile(b_crit, 0.975))};
  }
  nlohmann::json probes = nlohmann::json::array();
  for (const auto& [micro, seconds] : compute.micro_seconds) probes.push_back({{"micro_batch_size", micro}, {"seconds", seconds}});
  plan["compute"] = {{"describe", compute.describe}, {"micro_steps", probes}, {"update_seconds", compute.update_seconds}};
  plan["network"] = {{"describe", network.describe},
                     {"intra_alpha_seconds", network.intra.alpha},
                     {"intra_beta_seconds_per_byte", network.intra.beta},
                     {"inter_alpha_seconds", network.inter.alpha},
                     {"inter_beta_seconds_per_byte", network.inter.beta},
                     {"ranks_per_node", network.ranks_per_node},
                     {"overlap", network.overlap}};
  plan["gradient_bytes"] = gradient_bytes;
  plan["assumptions"] = {
      "step time = accumulation x the probed micro-step + one update + the all-reduce's exposed part",
      "all-reduce: a ring within a node; across nodes a hierarchical ring (reduce-scatter in the node, a ring "
      "across nodes on 1/ranks_per_node of the bytes, all-gather in the node), each phase alpha + beta x bytes",
      "communication hides behind at most `overlap` x the last micro-step's compute",
      "the steps to target do not depend on the split or the rank count (dtrain's equivalence), only on the "
      "global batch, at the best LR the study found",
      "compute per micro-step does not slow when more ranks share a node; the optimizer state is not sharded"};
  nlohmann::json all = nlohmann::json::array();
  for (const auto& row : rows) all.push_back(row_json(row));
  plan["rows"] = all;
  // Fastest within the ranks; ties to the cheaper.
  const PlanRow* fastest = &rows.front();
  for (const auto& row : rows) {
    if (row.time_to_target < fastest->time_to_target ||
        (row.time_to_target == fastest->time_to_target && row.rank_seconds < fastest->rank_seconds)) {
      fastest = &row;
    }
  }
  plan["fastest"] = recommendation(*fastest, request.lr,
                                   "the least time to target on up to " + std::to_string(request.max_ranks) + " ranks");
  const PlanRow* cheapest = nullptr;
  for (const auto& row : rows) {
    if (request.deadline_seconds > 0 && !(row.time_to_target <= request.deadline_seconds)) continue;
    if (!cheapest || row.rank_seconds < cheapest->rank_seconds ||
        (row.rank_seconds == cheapest->rank_seconds && row.time_to_target < cheapest->time_to_target)) {
      cheapest = &row;
    }
  }
  const std::string within = request.deadline_seconds > 0 ? "within the deadline of " + seconds_text(request.deadline_seconds)
                                                          : "with no deadline";
  plan["deadline_seconds"] = request.deadline_seconds > 0 ? nlohmann::json(request.deadline_seconds) : nlohmann::json(nullptr);
  plan["cheapest"] = cheapest ? recommendation(*cheapest, request.lr, "the fewest rank-seconds to target " + within)
                              : nlohmann::json(nullptr);
  if (!cheapest) plan["cheapest_reason"] = "no row reaches the target " + within;
  return plan;
}

std::string describe_plan(const nlohmann::json& plan) {
  std::ostringstream out;
  const bool relative = plan.at("steps_model").at("relative").get<bool>();
  out << "steps to target: " << plan.at("steps_model").at("describe").get<std::string>() << "\n";
  if (plan.at("steps_model").contains("warning")) {
    out << "warning: " << plan.at("steps_model").at("warning").get<std::string>() << "\n";
  }
  out << "compute: " << plan.at("compute").at("describe").get<std::string>() << "\n"
      << "network: " << plan.at("network").at("describe").get<std::string>() << "\n"
      << (relative ? "time to target relative to the current batch's steps (x step seconds)"
                   : "time to target")
      << " by global batch (rows) and ranks (columns); '-' where the batch does not split:\n";
  std::vector<int64_t> ranks, batches;
  for (const auto& row : plan.at("rows")) {
    const int64_t w = row.at("ranks").get<int64_t>(), b = row.at("global_batch_size").get<int64_t>();
    if (std::find(ranks.begin(), ranks.end(), w) == ranks.end()) ranks.push_back(w);
    if (std::find(batches.begin(), batches.end(), b) == batches.end()) batches.push_back(b);
  }
  std::sort(ranks.begin(), ranks.end());
  char cell[64];
  std::snprintf(cell, sizeof cell, "%8s %14s", "B", "steps");
  out << cell;
  for (const int64_t w : ranks) {
    std::snprintf(cell, sizeof cell, " %8lld", static_cast<long long>(w));
    out << cell;
  }
  out << "\n";
  for (const int64_t b : batches) {
    std::string steps = "-";
    std::vector<std::string> cells(ranks.size(), "-");
    for (const auto& row : plan.at("rows")) {
      if (row.at("global_batch_size").get<int64_t>() != b) continue;
      const auto at = std::find(ranks.begin(), ranks.end(), row.at("ranks").get<int64_t>()) - ranks.begin();
      const auto& time = row.at("time_to_target_seconds");
      cells[static_cast<size_t>(at)] = time.is_number() ? seconds_text(time.get<double>()) : "-";
      if (row.at("steps_to_target").is_number()) {
        std::snprintf(cell, sizeof cell, relative ? "%.3g" : "%.0f", row.at("steps_to_target").get<double>());
        steps = cell;
      }
    }
    std::snprintf(cell, sizeof cell, "%8lld %14s", static_cast<long long>(b), steps.c_str());
    out << cell;
    for (const auto& text : cells) {
      std::snprintf(cell, sizeof cell, " %8s", text.c_str());
      out << cell;
    }
    out << "\n";
  }
  // Relative steps make relative times: step-seconds per step at the measured batch.
  auto time_text = [&](const nlohmann::json& value) {
    if (!value.is_number()) return std::string("-");
    if (!relative) return seconds_text(value.get<double>());
    char text[48];
    std::snprintf(text, sizeof text, "%.3g x (steps at B0) s", value.get<double>());
    return std::string(text);
  };
  auto line = [&](const char* name, const nlohmann::json& r) {
    if (r.is_null()) return;
    const auto& interval = r.at("steps_to_target_interval");
    std::snprintf(cell, sizeof cell, "%.4g", r.at("peak_lr").get<double>());
    out << name << ": global batch " << r.at("global_batch_size").get<int64_t>() << " = micro "
        << r.at("micro_batch_size").get<int64_t>() << " x accum " << r.at("grad_accum_steps").get<int64_t>()
        << " x world " << r.at("ranks").get<int64_t>() << ", peak lr " << cell << " (" << r.at("lr_rule").get<std::string>()
        << "): " << time_text(r.at("time_to_target_seconds")) << " to target, "
        << time_text(r.at("rank_seconds_to_target")) << " of rank time, step " << seconds_text(r.at("step_seconds").get<double>());
    if (interval.at(0).is_number() && interval.at(1).is_number()) {
      std::snprintf(cell, sizeof cell, relative ? "%.3g to %.3g" : "%.0f to %.0f", interval.at(0).get<double>(),
                    interval.at(1).get<double>());
      out << ", steps 95% " << cell;
    }
    out << " [" << r.at("why").get<std::string>() << "]\n";
  };
  line("fastest", plan.at("fastest"));
  line("cheapest", plan.at("cheapest"));
  if (plan.contains("cheapest_reason")) out << "cheapest: " << plan.at("cheapest_reason").get<std::string>() << "\n";
  return out.str();
}

}  // namespace dtrain
