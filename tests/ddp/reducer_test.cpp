// The bucketed reducer on its own: overlap with backward, traffic, unused
// parameters (different ones on different ranks), reduced precision.
#include "ddp/reducer.h"

#include "common/error.h"
#include "models/models.h"
#include "test_world.h"

#include <gtest/gtest.h>

#include <cmath>
#include <torch/torch.h>

#include <limits>

namespace dtrain {
namespace {

using testing::world;

// An MLP whose middle layer is skipped on some forward passes, on a schedule
// that differs by rank: the reducer sees different unused parameters on
// different ranks in the same step.
class SkippingMlp : public Model {
 public:
  explicit SkippingMlp(int rank) : rank_(rank) {
    first_ = register_module("first", torch::nn::Linear(784, 32));
    middle_ = register_module("middle", torch::nn::Linear(32, 32));
    head_ = register_module("head", torch::nn::Linear(32, 10));
  }
  torch::Tensor forward(const torch::Tensor& inputs) override {
    auto x = torch::relu(first_->forward(inputs.flatten(1)));
    if (!skip_middle()) x = torch::relu(middle_->forward(x));
    ++calls_;
    return head_->forward(x);
  }
  bool skip_middle() const { return skip_all_ || (calls_ + rank_) % 3 == 0; }
  bool skip_all_ = false;

 private:
  int rank_;
  int64_t calls_ = 0;
  torch::nn::Linear first_{nullptr}, middle_{nullptr}, head_{nullptr};
};

std::shared_ptr<SkippingMlp> make_skipping(int rank, Communicator& comm) {
  torch::manual_seed(3);
  auto model = std::make_shared<SkippingMlp>(rank);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) comm.broadcast(p, 0);
  return model;
}

// One optimizer step of SGD on rank-specific data with `accum` micro-steps;
// returns nothing: the model is updated in place.
void step(Model& model, GradientReducer& reducer, int rank, int64_t step_index, int accum, double lr) {
  reducer.zero_grad();
  for (int micro = 0; micro < accum; ++micro) {
    auto generator = at::detail::createCPUGenerator(1000 * step_index + 10 * rank + micro);
    const auto inputs = at::randn({8, 784}, generator);
    const auto targets = at::randint(0, 10, {8}, generator);
    reducer.begin_micro_step(micro == accum - 1);
    torch::nn::functional::cross_entropy(model.forward(inputs), targets).backward();
  }
  reducer.finish();
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) p.sub_(lr * p.grad());
}

std::vector<torch::Tensor> snapshot(const Model& model) {
  std::vector<torch::Tensor> weights;
  for (const auto& p : model.parameters()) weights.push_back(p.detach().clone());
  return weights;
}

// The independent reference for the reducer: what it must compute, with
// plain autograd and no communication. Every rank's micro-batches (the
// batches of step() above) are known on every rank, so each rank runs every
// rank's forward and backward on its own replica of that rank's model (same
// weights, same skipping schedule) and sums the gradients over ranks and
// micro-steps; a parameter a replica skipped adds nothing.
class PlainAutogradSum {
 public:
  PlainAutogradSum(const Model& start, int world_size) {
    for (int rank = 0; rank < world_size; ++rank) {
      replicas_.push_back(std::make_shared<SkippingMlp>(rank));
      torch::NoGradGuard no_grad;
      const auto from = start.parameters();
      auto to = replicas_.back()->parameters();
      for (size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]);
    }
  }
  void step(int64_t step_index, int accum, double lr) {
    std::vector<torch::Tensor> sum;
    for (auto& p : replicas_.front()->parameters()) sum.push_back(torch::zeros_like(p));
    for (size_t rank = 0; rank < replicas_.size(); ++rank) {
      auto& replica = *replicas_[rank];
      for (auto& p : replica.parameters()) p.mutable_grad() = torch::Tensor();
      for (int micro = 0; micro < accum; ++micro) {
        auto generator = at::detail::createCPUGenerator(1000 * step_index + 10 * static_cast<int64_t>(rank) + micro);
        const auto inputs = at::randn({8, 784}, generator);
        const auto targets = at::randint(0, 10, {8}, generator);
        torch::nn::functional::cross_entropy(replica.forward(inputs), targets).backward();
      }
      const auto parameters = replica.parameters();
      for (size_t i = 0; i < parameters.size(); ++i) {
        if (parameters[i].grad().defined()) sum[i] += parameters[i].grad();
      }
    }
    torch::NoGradGuard no_grad;
    for (auto& replica : replicas_) {
      auto parameters = replica->parameters();
      for (size_t i = 0; i < parameters.size(); ++i) parameters[i].sub_(lr * sum[i]);
    }
    last_sum_ = sum;
  }
  const Model& model() const { return *replicas_.front(); }
  // The last step's summed gradients.
  const std::vector<torch::Tensor>& gradients() const { return last_sum_; }

 private:
  std::vector<std::shared_ptr<SkippingMlp>> replicas_;
  std::vector<torch::Tensor> last_sum_;
};

TEST(Reducer, UnusedParametersOnSomeRanksGiveTheSumOfEveryRanksGradients) {
  auto& comm = world();
  // One bucket started after backward, and one bucket per parameter started
  // from backward hooks: both against the plain autograd sum.
  const std::vector<std::pair<const char*, ReducerOptions>> reducers = {
      {"one bucket, after backward", {1 << 20, 1 << 30, false, torch::kFloat}},
      {"a bucket per parameter, from hooks", {1, 1, true, torch::kFloat}}};
  for (const auto& [what, options] : reducers) {
    SCOPED_TRACE(what);
    auto model = make_skipping(comm.rank(), comm);
    PlainAutogradSum reference(*model, comm.world_size());
    GradientReducer reducer(model->parameters(), comm, options);
    if (!options.overlap) ASSERT_EQ(reducer.num_buckets(), 1u);
    if (options.overlap) ASSERT_EQ(reducer.num_buckets(), model->parameters().size());
    bool some_rank_skipped_while_another_did_not = false;
    for (int64_t s = 0; s < 6; ++s) {
      for (int micro = 0; micro < 2; ++micro) {
        // The schedule of step() below: the call count is 2 s + micro on every rank.
        int skipping = 0;
        for (int rank = 0; rank < comm.world_size(); ++rank) skipping += (2 * s + micro + rank) % 3 == 0;
        some_rank_skipped_while_another_did_not |= skipping > 0 && skipping < comm.world_size();
      }
      step(*model, reducer, comm.rank(), s, 2, 0.1);
      reference.step(s, 2, 0.1);
      const auto parameters = model->parameters();
      for (size_t i = 0; i < parameters.size(); ++i) {
        EXPECT_TRUE(torch::allclose(parameters[i].grad(), reference.gradients()[i], 1e-5, 1e-6))
            << "step " << s << " parameter " << i << ": the reducer's gradient differs from the sum over ranks by "
            << (parameters[i].grad() - reference.gradients()[i]).abs().max().item<double>();
      }
    }
    if (comm.world_size() > 1) EXPECT_TRUE(some_rank_skipped_while_another_did_not);
    const auto a = snapshot(*model);
    const auto b = snapshot(reference.model());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-5, 1e-6)) << "parameter " << i;
  }
}

TEST(Reducer, AllFiniteSeesNaNAndInfButNotLargeFiniteGradients) {
  auto& comm = world();
  auto model = make_skipping(comm.rank(), comm);
  GradientReducer reducer(model->parameters(), comm, {1, 1, true, torch::kFloat});
  step(*model, reducer, comm.rank(), 0, 1, 0.0);
  EXPECT_TRUE(reducer.all_finite());
  // The gradients are views of the buckets: edit them in place.
  auto grad = model->named_parameters()["head.weight"].grad();
  torch::NoGradGuard no_grad;
  grad.fill_(3e38f);  // finite, but their float sum overflows
  EXPECT_TRUE(reducer.all_finite());
  // The norm too overflows in float; the reducer recomputes it in double.
  const double norm = reducer.grad_norm();
  EXPECT_TRUE(std::isfinite(norm));
  EXPECT_NEAR(norm, 3e38 * std::sqrt(static_cast<double>(grad.numel())), 1e-5 * norm);
  grad.view({-1})[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(reducer.all_finite());
  grad.fill_(0.5f);
  grad.view({-1})[0] = -std::numeric_limits<float>::infinity();
  EXPECT_FALSE(reducer.all_finite());
}

TEST(Reducer, ABucketNoRankUsedCompletesWithZeros) {
  auto& comm = world();
  auto model = make_skipping(comm.rank(), comm);
  GradientReducer reducer(model->parameters(), comm, {1, 1, true, torch::kFloat});
  model->skip_all_ = true;
  step(*model, reducer, comm.rank(), 0, 1, 0.0);
  const auto named = model->named_parameters();
  EXPECT_EQ(named["middle.weight"].grad().abs().max().item<float>(), 0.f);
  EXPECT_EQ(named["middle.bias"].grad().abs().max().item<float>(), 0.f);
  EXPECT_GT(named["head.weight"].grad().abs().max().item<float>(), 0.f);
  // The skipped layer's buckets could only start in finish(); the others
  // started from hooks during backward. A world of one installs no hooks.
  EXPECT_EQ(reducer.buckets_started_in_backward(), comm.world_size() > 1 ? 2 : 0);
}

TEST(Reducer, BucketsStartDuringBackwardOnlyOnTheLastMicroStep) {
  auto& comm = world();
  torch::manual_seed(0);
  ModelOptions options;
  options.hidden = {64, 64};
  auto model = make_model(options, {1, 28, 28}, 10);
  GradientReducer overlapped(model->parameters(), comm, {1, 1, true, torch::kFloat});
  comm.reset_stats();
  step(*model, overlapped, comm.rank(), 0, 3, 0.0);
  EXPECT_EQ(overlapped.num_buckets(), 6u);
  // A world of one has nothing to communicate: no hooks and no collectives.
  const bool communicates = comm.world_size() > 1;
  EXPECT_EQ(overlapped.buckets_started_in_backward(), communicates ? 6 : 0);
  EXPECT_EQ(comm.stats().all_reduce_calls, communicates ? 6 : 0) << "one call per bucket, none on the first micro-steps";
  EXPECT_EQ(comm.stats().all_reduce_bytes, communicates ? overlapped.bytes() : 0);
}

// A pretend world of two whose all-reduces finish on their first poll and
// count the polls they get once finished: the reducer's hooks must poll only
// buckets still in flight. No real collective runs, so each rank can run it.
class PollCountingCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  const char* backend_name() const override { return "poll-counting"; }
  void barrier() override {}
  std::vector<int64_t> all_gather(int64_t value) override { return {value, value}; }
  int polls = 0;
  int polls_after_done = 0;

 protected:
  void do_all_reduce(at::Tensor&, ReduceOp) override {}
  void do_broadcast(at::Tensor&, int) override {}
  std::unique_ptr<Work> do_all_reduce_async(at::Tensor&, ReduceOp) override {
    return std::make_unique<CountingWork>(this);
  }
  std::unique_ptr<Work> do_reduce_scatter_async(at::Tensor&, at::Tensor&) override {
    throw Error("the poll-counting world does not reduce-scatter");
  }
  std::unique_ptr<Work> do_all_gather_async(at::Tensor&) override {
    throw Error("the poll-counting world does not all-gather");
  }

 private:
  class CountingWork final : public Work {
   public:
    explicit CountingWork(PollCountingCommunicator* owner) : owner_(owner) {}
    void wait() override { done_ = true; }
    bool test() override {
      ++owner_->polls;
      if (done_) ++owner_->polls_after_done;
      done_ = true;
      return true;
    }

   private:
    PollCountingCommunicator* owner_;
    bool done_ = false;
  };
};

TEST(Reducer, HooksPollOnlyTheBucketsStillInFlight) {
  torch::manual_seed(0);
  ModelOptions options;
  options.hidden = {32, 32, 32};
  auto model = make_model(options, {1, 28, 28}, 10);
  PollCountingCommunicator comm;
  GradientReducer reducer(model->parameters(), comm, {1, 1, true, torch::kFloat});  // a bucket per tensor
  ASSERT_EQ(reducer.num_buckets(), 8u);
  step(*model, reducer, 0, 0, 1, 0.0);
  EXPECT_EQ(reducer.buckets_started_in_backward(), 8);
  EXPECT_GT(comm.polls, 0) << "buckets in flight are polled while backward runs";
  EXPECT_EQ(comm.polls_after_done, 0) << "a finished bucket was polled again";
}

TEST(Reducer, WithoutOverlapEveryBucketStartsAfterBackward) {
  auto& comm = world();
  torch::manual_seed(0);
  ModelOptions options;
  options.hidden = {64};
  auto model = make_model(options, {1, 28, 28}, 10);
  GradientReducer reducer(model->parameters(), comm, {1, 1, false, torch::kFloat});
  step(*model, reducer, comm.rank(), 0, 1, 0.0);
  EXPECT_EQ(reducer.buckets_started_in_backward(), 0);
}

TEST(Reducer, ReducedPrecisionHalvesTheBytesAndStaysClose) {
  auto& comm = world();
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    torch::manual_seed(0);
    ModelOptions options;
    options.hidden = {64};
    auto exact_model = make_model(options, {1, 28, 28}, 10);
    torch::manual_seed(0);
    auto compressed_model = make_model(options, {1, 28, 28}, 10);
    GradientReducer exact(exact_model->parameters(), comm, {1 << 20, 1 << 30, true, torch::kFloat});
    GradientReducer compressed(compressed_model->parameters(), comm, {1 << 20, 1 << 30, true, dtype});
    step(*exact_model, exact, comm.rank(), 0, 1, 0.0);
    comm.reset_stats();
    step(*compressed_model, compressed, comm.rank(), 0, 1, 0.0);
    // At world size 1 nothing is sent, but the gradients still take the
    // 16-bit round trip, so rounding does not depend on the world size.
    EXPECT_EQ(comm.stats().all_reduce_bytes, comm.world_size() > 1 ? compressed.bytes() / 2 : 0);
    const auto a = exact_model->parameters();
    const auto b = compressed_model->parameters();
    for (size_t i = 0; i < a.size(); ++i) {
      const double error = (a[i].grad() - b[i].grad()).norm().item<double>() / a[i].grad().norm().item<double>();
      EXPECT_LT(error, dtype == torch::kHalf ? 2e-3 : 1e-2) << c10::toString(dtype) << " parameter " << i;
      EXPECT_GT(error, 0) << "a 16-bit wire must round something";
    }
  }
}

TEST(Reducer, DetachedGradientsAreCaught) {
  auto& comm = world();
  torch::manual_seed(0);
  ModelOptions options;
  options.hidden = {8};
  auto model = make_model(options, {1, 28, 28}, 10);
  GradientReducer reducer(model->parameters(), comm, {1 << 20, 1 << 30, true, torch::kFloat});
  model->parameters()[0].mutable_grad() = torch::Tensor();
  EXPECT_THROW(reducer.zero_grad(), Error);
}

TEST(Reducer, HooksLeaveWithTheReducer) {
  auto& comm = world();
  torch::manual_seed(0);
  ModelOptions options;
  options.hidden = {8};
  auto model = make_model(options, {1, 28, 28}, 10);
  { GradientReducer reducer(model->parameters(), comm, {1, 1, true, torch::kFloat}); }
  // A backward after the reducer is gone must not call into it.
  model->forward(torch::randn({2, 784})).sum().backward();
  SUCCEED();
}

}  // namespace
}  // namespace dtrain
