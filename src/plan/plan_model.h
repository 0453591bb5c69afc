// dtrain plan's arithmetic (docs/studies.md, "Planning the batch"): how many
// steps a global batch needs to reach the target, how long a data-parallel
// step takes at a split and a rank count, and the table and recommendations
// built from the two. Pure functions of measured or given inputs: the probes
// that measure them are in plan/plan_command.cpp.
#pragma once
#include "cli/config.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dtrain {

// S(B) = S_min (1 + B_crit / B), fitted as study/aggregate.py fits it: least
// squares of S = a + b/B with residuals relative to S, a, b >= 0.
struct StepsFit {
  double s_min = 0;
  double b_crit = 0;  // infinite: no plateau seen (s_min 0)
  double e_min = 0;   // S_min B_crit, read where b_crit is infinite: S = e_min / B
};
StepsFit fit_steps_to_target(const std::vector<std::pair<double, double>>& batch_steps);

// Steps-to-target as a function of the global batch, with a 95% interval.
struct StepsModel {
  enum class Source { Fit, NoiseScale };
  Source source = Source::Fit;
  std::string describe;  // where it came from, one line
  StepsFit fit;          // Fit: the central fit; NoiseScale: b_crit = B_simple, s_min = 1/(1 + B_crit/B0)
  std::vector<StepsFit> draws;  // Fit: the bootstrap's refits; NoiseScale: B_simple's interval ends
  // Fit: one relative residual of the fit per draw, drawn with replacement:
  // a single run's scatter around the curve.
  std::vector<double> scatter;
  std::vector<std::pair<double, double>> points;  // Fit: the (B, S) it was fitted on
  // Set where the fit's largest batch lies below its B_crit: S_min is then
  // extrapolated, and intervals from the residuals (given the model) miss it.
  std::string warning;
  // Relative: steps in units of the current batch's (NoiseScale); absolute otherwise.
  bool relative() const { return source == Source::NoiseScale; }
  double steps(double batch) const;
  // 2.5% and 97.5%: for a fit, of one run's steps (each refit's curve times
  // its drawn residual: a prediction interval, not the curve's alone).
  std::pair<double, double> interval(double batch) const;
};

// From a study's points (B, steps), only those with LO <= B <= HI: the fit,
// and a bootstrap of its relative residuals (`draws` refits, fixed seed).
StepsModel steps_model_from_points(const std::vector<std::pair<double, double>>& points, double low, double high,
                                   int draws, uint64_t seed);
// From a measured B_simple (with its 95% interval) at the current batch B0:
// Pollux's statistical efficiency, steps relative to B0's,
// S(B)/S(B0) = (1 + B_crit/B) / (1 + B_crit/B0) with B_crit ~ B_simple.
StepsModel steps_model_from_noise_scale(double b_simple, double low, double high, double current_batch);

// One link's all-reduce cost per ring phase: alpha seconds + beta seconds per byte.
struct LinkCost {
  double alpha = 0;
  double beta = 0;
};

// The network: a ring within a node, and across nodes a hierarchical ring
// (reduce-scatter in the node, all-reduce across nodes on 1/r of the
// bytes, all-gather in the node) with r ranks per node.
struct NetworkModel {
  LinkCost intra;
  LinkCost inter;
  int64_t ranks_per_node = 8;
  // The share of the all-reduce that hides behind the last micro-step, of
  // as much as it could hide (the shorter of the two): exposed = comm -
  // overlap x min(comm, micro-step). Measured by the probe; 0 where buckets
  // wait for the end of backward.
  double overlap = 0;
  std::string describe;
};
// Seconds of one all-reduce of `bytes` over `world` ranks.
double all_reduce_seconds(const NetworkModel& network, int64_t world, double bytes);
// Least squares of t = a + b x bytes with residuals relative to t: a
// ring of `world` ranks then gives alpha = a / (2(W-1)), beta = b W / (2(W-1)).
LinkCost fit_ring(const std::vector<std::pair<double, double>>& bytes_seconds, int64_t world);

// Compute: one micro-step (forward and backward) of each probed size, and
// a step's fixed part (the update, zeroing, the non-finite check, the loop).
struct ComputeModel {
  std::vector<std::pair<int64_t, double>> micro_seconds;  // ascending sizes; the largest is the largest that fits
  double update_seconds = 0;
  std::string describe;
};

struct PlanRow {
  int64_t global_batch = 0;
  int64_t ranks = 0;
  int64_t micro = 0;
  int64_t accum = 0;
  double steps = 0, steps_low = 0, steps_high = 0;
  double step_seconds = 0;
  double compute_seconds = 0, exposed_comm_seconds = 0;
  double time_to_target = 0;
  double samples_to_target = 0;
  double rank_seconds = 0;
};

// The fastest split of global batch B on W ranks (nullopt: none fits).
std::optional<PlanRow> plan_row(const StepsModel& steps, const ComputeModel& compute, const NetworkModel& network,
                                double gradient_bytes, int64_t global_batch, int64_t ranks);

struct PlanRequest {
  int64_t max_ranks = 1;
  int64_t batch_low = 16, batch_high = 16384;  // powers of two between
  double deadline_seconds = 0;                 // 0: none
  LrOptions lr;                                // the run's scaling rule
};

// plan.json: the inputs, every row, and the two recommendations.
nlohmann::json make_plan(const StepsModel& steps, const ComputeModel& compute, const NetworkModel& network,
                         double gradient_bytes, const PlanRequest& request);
// The table and the recommendations as text.
std::string describe_plan(const nlohmann::json& plan);

}  // namespace dtrain
