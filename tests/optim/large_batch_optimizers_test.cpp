// LARS and LAMB (optim/large_batch_optimizers.h): two steps worked by hand,
// five steps against the literal Python definitions in
// optimizer_reference.py, and a state round trip through the ParamState types
// that dtrain's checkpoints save.
#include "optim/large_batch_optimizers.h"

#include "optim/optimizer.h"

#include "common/error.h"
#include "io/weights.h"
#include "skip.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <unistd.h>

namespace dtrain {
namespace {

namespace fs = std::filesystem;

at::Tensor parameter(torch::detail::TensorDataContainer values) {
  return torch::tensor(values, torch::kFloat).requires_grad_();
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

// One optimizer step at `lr` with these gradients (undefined: no gradient).
void step(torch::optim::Optimizer& optimizer, std::vector<at::Tensor> parameters, std::vector<at::Tensor> gradients,
          double lr) {
  for (size_t i = 0; i < parameters.size(); ++i) {
    parameters[i].mutable_grad() = gradients[i].defined() ? gradients[i].clone() : at::Tensor();
  }
  set_lr(optimizer, lr);
  optimizer.step();
}

void expect_values(const at::Tensor& actual, std::vector<double> expected, const char* what) {
  const at::Tensor flat = actual.detach().to(torch::kDouble).flatten();
  ASSERT_EQ(flat.numel(), static_cast<int64_t>(expected.size())) << what;
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(flat[i].item<double>(), expected[i], 1e-6) << what << " element " << i;
  }
}

TEST(LargeBatchOptions, OutOfRangeValuesAreRefused) {
  const std::vector<at::Tensor> parameters = {parameter({1.0f})};
  EXPECT_THROW(make_lars(parameters, {-0.1}), Error);
  EXPECT_THROW(make_lars(parameters, {0.1, 0.9, 0, 0}), Error);
  EXPECT_THROW(make_lamb(parameters, {0.1, 1.0}), Error);
  EXPECT_THROW(make_lamb(parameters, {0.1, 0.9, 0.999, -1}), Error);
  EXPECT_NO_THROW(make_lamb(parameters, {0.1}));
}

// lr 0.1 then 0.2 (set between steps, as the trainer does), momentum 0.9,
// weight decay 0.1, trust coefficient 0.5; the same gradients both steps.
//   W = [[3, 0], [0, 4]], G = [[-0.3, 1.2], [1.6, -0.4]]
//   step 1: g' = G + 0.1·W = [[0, 1.2], [1.6, 0]], ‖g'‖ = 2, ‖W‖ = 5
//           trust = 0.5·5/2 = 1.25; v = 0.1·1.25·g' = [[0, 0.15], [0.2, 0]]
//           W = [[3, -0.15], [-0.2, 4]]
//   step 2: g' = G + 0.1·W = [[0, 1.185], [1.58, 0]], ‖g'‖ = 1.975
//           ‖W‖ = √25.0625 = 5.0062461; trust = 0.5·5.0062461/1.975 = 1.2674041
//           v = 0.9·v + 0.2·1.2674041·g' = [[0, 0.135 + 0.3003748], [0.18 + 0.4004997, 0]]
//           W = [[3, -0.5853748], [-0.7804997, 4]]
// The bias b = [1, -1] with g = [0.5, 0.25] is excluded (no decay, trust 1):
//   v = 0.1·g = [0.05, 0.025], b = [0.95, -1.025]
//   v = 0.9·v + 0.2·g = [0.145, 0.0725], b = [0.805, -1.0975]
// `frozen` has no gradient: untouched, and no state.
TEST(LargeBatchLars, TwoStepsByHand) {
  at::Tensor weight = parameter({{3, 0}, {0, 4}});
  at::Tensor bias = parameter({1, -1});
  at::Tensor frozen = parameter({{1, 2}, {3, 4}});
  auto optimizer = make_lars({weight, bias, frozen}, {0.1, 0.9, 0.1, 0.5});
  const at::Tensor weight_gradient = torch::tensor({{-0.3f, 1.2f}, {1.6f, -0.4f}});
  const at::Tensor bias_gradient = torch::tensor({0.5f, 0.25f});
  for (double lr : {0.1, 0.2}) step(*optimizer, {weight, bias, frozen}, {weight_gradient, bias_gradient, {}}, lr);
  expect_values(weight, {3, -0.5853747659, -0.7804996879, 4}, "weight");
  expect_values(bias, {0.805, -1.0975}, "bias");
  expect_values(frozen, {1, 2, 3, 4}, "frozen");
  EXPECT_EQ(optimizer->state().size(), 2u);
  const auto& velocity = static_cast<const torch::optim::SGDParamState&>(
      *optimizer->state().at(optimizer_state_key(optimizer->state(), bias)));
  expect_values(velocity.momentum_buffer(), {0.145, 0.0725}, "bias momentum_buffer");
}

// Weight decay 0.5, lr 0.1, momentum 0.9, trust coefficient 0.5.
// A zero weight Z with gradient G = [[1, 2], [2, 4]]: ‖Z‖ = 0 so trust = 1,
//   v = 0.1·G, Z = -0.1·G. Step 2: g' = G + 0.5·Z = 0.95·G and
//   trust = 0.5·‖Z‖/‖g'‖ = 0.5·0.1/0.95, so lr·trust·g' = 0.005·G;
//   v = 0.09·G + 0.005·G = 0.095·G, Z = -0.195·G.
// W = [[2, 0], [0, 4]] with G = -0.5·W: g' = 0 exactly, so trust = 1 (not
//   inf or NaN), v = 0 and W stays put.
TEST(LargeBatchLars, ZeroNormsGiveTrustOne) {
  at::Tensor zero = parameter({{0, 0}, {0, 0}});
  at::Tensor balanced = parameter({{2, 0}, {0, 4}});
  auto optimizer = make_lars({zero, balanced}, {0.1, 0.9, 0.5, 0.5});
  const at::Tensor zero_gradient = torch::tensor({{1.0f, 2.0f}, {2.0f, 4.0f}});
  const at::Tensor balancing_gradient = torch::tensor({{-1.0f, 0.0f}, {0.0f, -2.0f}});
  for (int i = 0; i < 2; ++i) step(*optimizer, {zero, balanced}, {zero_gradient, balancing_gradient}, 0.1);
  expect_values(zero, {-0.195, -0.39, -0.39, -0.78}, "zero");
  expect_values(balanced, {2, 0, 0, 4}, "balanced");
}

// lr 0.1 then 0.2, betas 0.9 and 0.999, eps 0.5, weight decay 0.1; the same
// gradient both steps, so the bias-corrected moments are exactly g and g²
// (step 2: m = 0.19·g and 1-0.9² = 0.19; v = 0.001999·g² and 1-0.999² =
// 0.001999), and m̂/(√v̂+eps) = g/(|g|+0.5).
//   W = [[3, 0], [0, 4]], G = [[0.5, -1.5], [1.5, 0.5]], g/(|g|+0.5) = A = [[0.5, -0.75], [0.75, 0.5]]
//   step 1: r = A + 0.1·W = [[0.8, -0.75], [0.75, 0.9]], ‖r‖ = √2.575 = 1.6046807
//           ratio = 5/1.6046807 = 3.1158848; W = W - 0.1·3.1158848·r
//           = [[2.7507292, 0.2336914], [-0.2336914, 3.7195704]]
//   step 2: r = A + 0.1·W = [[0.7750729, -0.7266309], [0.7266309, 0.8719570]]
//           ‖W‖ = 4.6379886, ‖r‖ = 1.5546807, ratio = 2.9832420
//           W = W - 0.2·2.9832420·r = [[2.2882832, 0.6672345], [-0.6672345, 3.1993186]]
// The bias b = [1, -1] with g = [0.5, -1.5] is excluded: r = [0.5, -0.75]
//   without decay, ratio 1: b = [0.95, -0.925], then b = [0.85, -0.775].
TEST(LargeBatchLamb, TwoStepsByHand) {
  at::Tensor weight = parameter({{3, 0}, {0, 4}});
  at::Tensor bias = parameter({1, -1});
  at::Tensor frozen = parameter({{1, 2}, {3, 4}});
  auto optimizer = make_lamb({weight, bias, frozen}, {0.1, 0.9, 0.999, 0.5, 0.1});
  const at::Tensor weight_gradient = torch::tensor({{0.5f, -1.5f}, {1.5f, 0.5f}});
  const at::Tensor bias_gradient = torch::tensor({0.5f, -1.5f});
  for (double lr : {0.1, 0.2}) step(*optimizer, {weight, bias, frozen}, {weight_gradient, bias_gradient, {}}, lr);
  expect_values(weight, {2.2882832021, 0.6672344981, -0.6672344981, 3.1993186023}, "weight");
  expect_values(bias, {0.85, -0.775}, "bias");
  expect_values(frozen, {1, 2, 3, 4}, "frozen");
  EXPECT_EQ(optimizer->state().size(), 2u);
  const auto& moments = static_cast<const torch::optim::AdamWParamState&>(
      *optimizer->state().at(optimizer_state_key(optimizer->state(), bias)));
  EXPECT_EQ(moments.step(), 2);
  expect_values(moments.exp_avg(), {0.19 * 0.5, 0.19 * -1.5}, "bias exp_avg");
  expect_values(moments.exp_avg_sq(), {0.001999 * 0.25, 0.001999 * 2.25}, "bias exp_avg_sq");
}

// lr 0.1, eps 0.5, weight decay 0.5 (the results do not depend on it).
// A zero weight Z with G = [[0.5, -1.5], [1.5, 0]] (A = [[0.5, -0.75], [0.75, 0]]):
//   ‖Z‖ = 0 so ratio 1 and Z = -0.1·A. Step 2: r = A + 0.5·Z = 0.95·A,
//   ratio = ‖Z‖/‖r‖ = 0.1/0.95, so Z = -0.1·A - 0.1·(0.1/0.95)·0.95·A = -0.11·A.
// W = [[3, 0], [0, 4]] with no gradient signal (g = 0): r = 0.5·W, ratio = 2,
//   so W = W - 0.1·W = 0.9·W, then 0.81·W.
// With weight decay 0 as well, r = 0: ratio 1 (not NaN), W stays put.
TEST(LargeBatchLamb, ZeroNormsGiveRatioOne) {
  at::Tensor zero = parameter({{0, 0}, {0, 0}});
  at::Tensor unpushed = parameter({{3, 0}, {0, 4}});
  at::Tensor still = parameter({{3, 0}, {0, 4}});
  auto decaying = make_lamb({zero, unpushed}, {0.1, 0.9, 0.999, 0.5, 0.5});
  auto plain = make_lamb({still}, {0.1, 0.9, 0.999, 0.5, 0.0});
  const at::Tensor zero_gradient = torch::tensor({{0.5f, -1.5f}, {1.5f, 0.0f}});
  for (int i = 0; i < 2; ++i) {
    step(*decaying, {zero, unpushed}, {zero_gradient, torch::zeros({2, 2})}, 0.1);
    step(*plain, {still}, {torch::zeros({2, 2})}, 0.1);
  }
  expect_values(zero, {-0.055, 0.0825, -0.0825, 0}, "zero");
  expect_values(unpushed, {2.43, 0, 0, 3.24}, "unpushed");
  expect_values(still, {3, 0, 0, 4}, "still");
}

// ---- Against optimizer_reference.py ----------------------------------------

const char* const kPython = "/usr/bin/python3";  // Debian's python3-torch; the python3 first on PATH has no torch

struct Problem {
  NamedTensors initial;                            // name -> initial value
  std::map<std::string, std::vector<at::Tensor>> gradients;  // name -> one per step
  std::vector<double> lrs;
};

// Three parameters (two weights and a bias), five steps of random gradients
// with a changing LR.
Problem random_problem() {
  torch::manual_seed(1234);
  Problem problem;
  problem.lrs = {0.04, 0.1, 0.2, 0.16, 0.08};
  const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"first.weight", {4, 3}}, {"first.bias", {4}}, {"second.weight", {2, 4}}};
  for (const auto& [name, shape] : shapes) {
    problem.initial.emplace_back(name, torch::randn(shape));
    for (size_t k = 0; k < problem.lrs.size(); ++k) problem.gradients[name].push_back(torch::randn(shape) * 0.3);
  }
  return problem;
}

std::vector<at::Tensor> fresh_parameters(const Problem& problem) {
  std::vector<at::Tensor> parameters;
  for (const auto& item : problem.initial) parameters.push_back(item.second.clone().requires_grad_());
  return parameters;
}

void run(torch::optim::Optimizer& optimizer, const Problem& problem, const std::vector<at::Tensor>& parameters,
         size_t from, size_t to) {
  for (size_t k = from; k < to; ++k) {
    std::vector<at::Tensor> gradients;
    for (const auto& item : problem.initial) gradients.push_back(problem.gradients.at(item.first)[k]);
    step(optimizer, parameters, gradients, problem.lrs[k]);
  }
}

const LarsOptions kLars = {0, 0.9, 0.05, 0.5};
const LambOptions kLamb = {0, 0.8, 0.99, 1e-6, 0.05};

// Largest difference relative to the largest value, per tensor: an
// elementwise relative bound would be dominated by entries near zero.
double relative_difference(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual.detach() - expected).abs().max().item<double>() / expected.abs().max().item<double>();
}

TEST(LargeBatchReference, FiveStepsMatchTheLiteralPythonDefinitions) {
  if (std::system((std::string(kPython) + " -c 'import torch' >/dev/null 2>&1").c_str()) != 0) {
    DTRAIN_SKIP_OUTSIDE_CI(std::string(kPython) + " cannot import torch (apt-get install python3-torch), which "
                           "the comparison with tests/optim/optimizer_reference.py needs");
  }
  const Problem problem = random_problem();
  const fs::path dir = fs::temp_directory_path() / ("dtrain_large_batch_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  NamedTensors input;
  for (const auto& [name, value] : problem.initial) {
    input.emplace_back(name + ".init", value);
    for (size_t k = 0; k < problem.lrs.size(); ++k) {
      input.emplace_back(name + ".grad." + std::to_string(k), problem.gradients.at(name)[k]);
    }
  }
  save_weights(input, (dir / "input.pt").string());

  std::ostringstream command;
  command.precision(17);
  command << kPython << " '" << DTRAIN_SOURCE_DIR << "/tests/optim/optimizer_reference.py' '" << (dir / "input.pt").string()
          << "' '" << (dir / "output.pt").string() << "' --lrs";
  for (double lr : problem.lrs) command << " " << lr;
  command << " --momentum " << kLars.momentum << " --weight-decay " << kLars.weight_decay << " --trust-coefficient "
          << kLars.trust_coefficient << " --beta1 " << kLamb.beta1 << " --beta2 " << kLamb.beta2 << " --eps "
          << kLamb.eps;
  ASSERT_EQ(kLars.weight_decay, kLamb.weight_decay);  // the script takes one
  const int status = std::system(command.str().c_str());
  ASSERT_EQ(status, 0) << command.str();
  std::map<std::string, at::Tensor> reference;
  for (auto& [name, value] : read_weights((dir / "output.pt").string())) reference[name] = value;
  fs::remove_all(dir);

  const std::vector<at::Tensor> lars_parameters = fresh_parameters(problem);
  const std::vector<at::Tensor> lamb_parameters = fresh_parameters(problem);
  auto lars = make_lars(lars_parameters, kLars);
  auto lamb = make_lamb(lamb_parameters, kLamb);
  run(*lars, problem, lars_parameters, 0, problem.lrs.size());
  run(*lamb, problem, lamb_parameters, 0, problem.lrs.size());
  for (size_t i = 0; i < problem.initial.size(); ++i) {
    const std::string& name = problem.initial[i].first;
    ASSERT_TRUE(reference.count("lars." + name) && reference.count("lamb." + name)) << name;
    // The steps moved the parameters well beyond the tolerance.
    EXPECT_GT(relative_difference(problem.initial[i].second, reference.at("lars." + name)), 1e-2) << name;
    EXPECT_GT(relative_difference(problem.initial[i].second, reference.at("lamb." + name)), 1e-2) << name;
    EXPECT_LE(relative_difference(lars_parameters[i], reference.at("lars." + name)), 1e-6) << "lars " << name;
    EXPECT_LE(relative_difference(lamb_parameters[i], reference.at("lamb." + name)), 1e-6) << "lamb " << name;
  }
}

// ---- State round trip --------------------------------------------------------
// Through the checkpoint's named state (optimizer_state, load_optimizer_state):
// OptimizerState.EveryOptimizerContinuesBitForBitFromItsNamedState in
// checkpoint_test.cpp, for LARS and LAMB as for SGD and AdamW.

}  // namespace
}  // namespace dtrain
