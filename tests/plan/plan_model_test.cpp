#include "plan/plan_model.h"

#include "common/error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

namespace dtrain {
namespace {

nlohmann::json shipped_fit() {
  std::ifstream in(std::string(DTRAIN_SOURCE_DIR) + "/docs/studies/fit.json");
  return nlohmann::json::parse(in);
}

std::vector<std::pair<double, double>> shipped_points() {
  std::vector<std::pair<double, double>> points;
  const nlohmann::json fit = shipped_fit();
  for (const auto& p : fit.at("fits").at("sgd").at("points")) {
    points.emplace_back(p.at("global_batch_size").get<double>(), p.at("steps_to_target").get<double>());
  }
  return points;
}

// The same fit as study/aggregate.py's (numpy), on the shipped study's points.
TEST(PlanModel, FitsStepsToTargetAsTheStudyDoes) {
  const auto fit = fit_steps_to_target(shipped_points());
  const nlohmann::json shipped = shipped_fit();
  const auto& expected = shipped.at("fits").at("sgd");
  EXPECT_NEAR(fit.s_min, expected.at("s_min").get<double>(), 1e-9 * fit.s_min);
  EXPECT_NEAR(fit.b_crit, expected.at("b_crit").get<double>(), 1e-9 * fit.b_crit);
  // Perfect scaling (no plateau) and no gain from any larger batch.
  StepsModel no_plateau;
  no_plateau.fit = fit_steps_to_target({{16, 1000}, {32, 500}, {64, 250}});
  EXPECT_EQ(no_plateau.fit.s_min, 0);
  EXPECT_TRUE(std::isinf(no_plateau.fit.b_crit));
  EXPECT_NEAR(no_plateau.steps(128), 125, 1e-6);
  EXPECT_NE(steps_model_from_points({{16, 1000}, {32, 500}, {64, 250}}, 0, 1e18, 10, 1).warning.find("no plateau"),
            std::string::npos);
  const auto flat = fit_steps_to_target({{16, 100}, {32, 100}, {64, 110}});
  EXPECT_EQ(flat.b_crit, 0);
}

TEST(PlanModel, BootstrapIntervalsHoldTheFitAndWidenBeyondThePoints) {
  const StepsModel all = steps_model_from_points(shipped_points(), 0, 1e18, 500, 3);
  const StepsModel small = steps_model_from_points(shipped_points(), 16, 512, 500, 3);
  EXPECT_EQ(small.points.size(), 6u);
  for (const double b : {64.0, 1024.0, 8192.0}) {
    const auto [low, high] = small.interval(b);
    EXPECT_LE(low, small.steps(b));
    EXPECT_GE(high, small.steps(b));
  }
  // Fitted below B_crit only, the plateau is poorly pinned down.
  const auto [small_low, small_high] = small.interval(8192);
  const auto [all_low, all_high] = all.interval(8192);
  EXPECT_GT((small_high - small_low) / small.steps(8192), (all_high - all_low) / all.steps(8192));
  EXPECT_THROW(steps_model_from_points(shipped_points(), 16, 20, 10, 3), UsageError);
  // Only the small fit's points all lie below its B_crit: it says so.
  EXPECT_NE(small.warning.find("below its B_crit"), std::string::npos);
  EXPECT_TRUE(all.warning.empty());
}

TEST(PlanModel, NoiseScaleGivesStepsRelativeToTheCurrentBatch) {
  const StepsModel model = steps_model_from_noise_scale(500, 300, 900, 128);
  EXPECT_TRUE(model.relative());
  EXPECT_DOUBLE_EQ(model.steps(128), 1.0);
  // (1 + 500/1024) / (1 + 500/128)
  EXPECT_NEAR(model.steps(1024), (1 + 500.0 / 1024) / (1 + 500.0 / 128), 1e-12);
  const auto [low, high] = model.interval(1024);
  EXPECT_LT(low, model.steps(1024));
  EXPECT_GT(high, model.steps(1024));
}

TEST(PlanModel, RingAndHierarchicalAllReduce) {
  NetworkModel network;
  network.intra = {1e-5, 1e-9};
  network.inter = {1e-4, 1e-8};
  network.ranks_per_node = 8;
  EXPECT_EQ(all_reduce_seconds(network, 1, 1e6), 0);
  EXPECT_NEAR(all_reduce_seconds(network, 2, 1e6), 2 * 1e-5 + 1e6 * 1e-9, 1e-15);
  EXPECT_NEAR(all_reduce_seconds(network, 8, 1e6), 14 * 1e-5 + 14.0 / 8 * 1e6 * 1e-9, 1e-15);
  // 32 ranks = 4 nodes of 8: the node's ring on all bytes, then 4 nodes on 1/8 of them.
  EXPECT_NEAR(all_reduce_seconds(network, 32, 1e6),
              14 * 1e-5 + 14.0 / 8 * 1e6 * 1e-9 + 6 * 1e-4 + 6.0 / 4 * 1e6 / 8 * 1e-8, 1e-12);
  // fit_ring recovers alpha and beta from exact timings at 4 ranks.
  NetworkModel four;
  four.intra = {3e-6, 2e-10};
  std::vector<std::pair<double, double>> samples;
  for (double bytes = 4096; bytes <= 64e6; bytes *= 4) samples.emplace_back(bytes, all_reduce_seconds(four, 4, bytes));
  const LinkCost fitted = fit_ring(samples, 4);
  EXPECT_NEAR(fitted.alpha, 3e-6, 1e-12);
  EXPECT_NEAR(fitted.beta, 2e-10, 1e-16);
}

TEST(PlanModel, RowsTakeTheFastestSplitAndRecommendationsTheirAims) {
  StepsModel steps;
  steps.fit = {100, 1000};
  ComputeModel compute;
  // Per sample, micro 4 is the fastest; 16 is the largest that fits.
  compute.micro_seconds = {{1, 0.004}, {2, 0.006}, {4, 0.008}, {8, 0.024}, {16, 0.048}};
  compute.update_seconds = 0.001;
  NetworkModel network;
  network.intra = {1e-3, 1e-9};
  const auto row = plan_row(steps, compute, network, 4e6, 64, 2);
  ASSERT_TRUE(row);
  EXPECT_EQ(row->micro, 4);
  EXPECT_EQ(row->accum, 8);
  const double comm = 2 * 1e-3 + 4e6 * 1e-9;
  EXPECT_NEAR(row->step_seconds, 8 * 0.008 + 0.001 + comm, 1e-12);
  EXPECT_NEAR(row->time_to_target, steps.steps(64) * row->step_seconds, 1e-9);
  EXPECT_FALSE(plan_row(steps, compute, network, 4e6, 3, 2));  // does not split
  network.overlap = 0.5;  // half of the all-reduce (shorter than the micro-step) hides
  EXPECT_NEAR(plan_row(steps, compute, network, 4e6, 64, 2)->exposed_comm_seconds, comm / 2, 1e-12);
  network.overlap = 0;
  // A compute model linear in the micro-batch: ties go to the larger micro-batch.
  ComputeModel linear;
  linear.micro_seconds = {{1, 0.001}, {2, 0.002}, {4, 0.004}, {8, 0.008}};
  EXPECT_EQ(plan_row(steps, linear, network, 4e6, 64, 4)->micro, 8);

  PlanRequest request;
  request.max_ranks = 16;
  request.batch_low = 16;
  request.batch_high = 4096;
  request.lr.lr = 0.1;
  request.lr.base_batch_size = 256;
  // A deadline twice the fastest time: the cheapest trades time for rank-seconds.
  const double deadline = 2 * make_plan(steps, compute, network, 4e6, request).at("fastest").at("time_to_target_seconds").get<double>();
  request.deadline_seconds = deadline;
  const nlohmann::json plan = make_plan(steps, compute, network, 4e6, request);
  double fastest = INFINITY, cheapest = INFINITY;
  for (const auto& r : plan.at("rows")) {
    fastest = std::min(fastest, r.at("time_to_target_seconds").get<double>());
    if (r.at("time_to_target_seconds").get<double>() <= deadline) {
      cheapest = std::min(cheapest, r.at("rank_seconds_to_target").get<double>());
    }
  }
  EXPECT_EQ(plan.at("fastest").at("time_to_target_seconds").get<double>(), fastest);
  EXPECT_EQ(plan.at("cheapest").at("rank_seconds_to_target").get<double>(), cheapest);
  EXPECT_LE(plan.at("cheapest").at("time_to_target_seconds").get<double>(), deadline);
  EXPECT_LT(plan.at("cheapest").at("rank_seconds_to_target").get<double>(),
            plan.at("fastest").at("rank_seconds_to_target").get<double>());
  const int64_t b = plan.at("fastest").at("global_batch_size").get<int64_t>();
  EXPECT_DOUBLE_EQ(plan.at("fastest").at("peak_lr").get<double>(), 0.1 * static_cast<double>(b) / 256);
  EXPECT_FALSE(describe_plan(plan).empty());
  request.deadline_seconds = 1e-6;  // nothing is that fast
  EXPECT_TRUE(make_plan(steps, compute, network, 4e6, request).at("cheapest").is_null());

  // From a noise scale, times are relative, and the text says so.
  request.deadline_seconds = 0;
  const nlohmann::json relative =
      make_plan(steps_model_from_noise_scale(500, 300, 900, 128), compute, network, 4e6, request);
  EXPECT_TRUE(relative.at("steps_model").at("relative").get<bool>());
  EXPECT_NE(describe_plan(relative).find("x (steps at B0) s to target"), std::string::npos);
}

}  // namespace
}  // namespace dtrain
