// The gradient reducer on a GPU through NCCL, against plain PyTorch on the
// same GPU and the same batch. Proves that:
//   - its reduced gradients are PyTorch's, times the number of ranks (every
//     rank here trains the same batch; the reducer SUMS across ranks and
//     divides by nothing: the 1/global-batch is in the trainer's loss), to
//     1e-6 on the fp32 wire and within the 16-bit rounding on the bf16 and
//     fp16 wires, with one bucket and several, overlap on and off;
//   - the trainer's gradient norm is torch::nn::utils::clip_grad_norm_'s on
//     the same batch's gradients (1e-5), and its clipped gradients are the
//     ones clip_grad_norm_ leaves.
// At world size 1 the reducer communicates nothing (a sum over one rank is
// the identity), so each reducer check also runs through OneRankAsTwo: NCCL's
// world of one presented as a world of two. The reducer then takes its
// communicating path (hooks on the gradient accumulators, buckets started
// during backward, all-reduces on NCCL's stream, the 16-bit wire) while every
// sum still has one term.
//
// ReducerGpu.* skip (on every rank together) without NCCL in the build or a
// GPU per rank; tests/gpu/ runs them. ReducerCpu.* are the same checks on the
// CPU through MPI, in every build, so a failure of a GPU one points at the
// GPU path rather than at the check.
#include "cli/options.h"
#include "comm/placement.h"
#include "common/error.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "models/models.h"
#include "skip.h"
#include "test_world.h"
#include "data/batch_plan.h"
#include "ddp/reducer.h"
#include "train/trainer.h"

#ifdef DTRAIN_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <iterator>
#include <string>

namespace dtrain {
namespace {

using testing::every_rank_has_a_gpu;
using testing::world;

// A world of one (`one`) presented as a world of two whose other rank is
// this one again: collectives go to `one`, so each sum has a single term.
class OneRankAsTwo final : public Communicator {
 public:
  explicit OneRankAsTwo(Communicator& one) : one_(one) {}
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  const char* backend_name() const override { return one_.backend_name(); }
  void barrier() override { one_.barrier(); }
  std::vector<int64_t> all_gather(int64_t value) override { return {value, value}; }

 protected:
  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override { one_.all_reduce(tensor, op); }
  std::unique_ptr<Work> do_all_reduce_async(at::Tensor& tensor, ReduceOp op) override {
    return one_.all_reduce_async(tensor, op);
  }
  void do_broadcast(at::Tensor& tensor, int root) override { one_.broadcast(tensor, root); }
  std::unique_ptr<Work> do_reduce_scatter_async(at::Tensor&, at::Tensor&) override {
    throw Error("one rank presented as two cannot reduce-scatter");
  }
  std::unique_ptr<Work> do_all_gather_async(at::Tensor&) override {
    throw Error("one rank presented as two cannot all-gather");
  }

 private:
  Communicator& one_;
};

// Runs `check(comm, ranks summed)` through `real`, and at world size 1 also
// through OneRankAsTwo over it.
void for_each_path(Communicator& real, const std::function<void(Communicator&, int)>& check) {
  check(real, real.world_size());
  if (real.world_size() == 1) {
    OneRankAsTwo as_two(real);
    check(as_two, 1);
  }
}

// "nccl at world size 1", "nccl, one rank presented as two", for messages.
std::string describe(const Communicator& comm, int ranks) {
  return std::string(comm.backend_name()) +
         (comm.world_size() == ranks ? " at world size " + std::to_string(ranks) : ", one rank presented as two");
}

constexpr int64_t kMicroBatch = 16;
constexpr int kAccum = 4;
constexpr int64_t kBatch = kMicroBatch * kAccum;

struct Batch {
  torch::Tensor inputs, targets;
};

// The same on every rank: drawn on the CPU from `seed`, then moved.
Batch make_batch(uint64_t seed, torch::Device device) {
  auto generator = at::detail::createCPUGenerator(seed);
  const auto inputs = at::randn({kBatch, 1, 28, 28}, generator);
  const auto targets = at::randint(0, 10, {kBatch}, generator);
  return {inputs.to(device), targets.to(device)};
}

// 784 -> 64 -> 32 -> 10: six tensors, 210600 bytes of gradients.
std::shared_ptr<Model> make_mlp(torch::Device device) {
  torch::manual_seed(5);
  ModelOptions options;
  options.hidden = {64, 32};
  auto model = make_model(options, {1, 28, 28}, 10);
  model->to(device);
  return model;
}

// The trainer's loss for one micro-step: summed over its samples, divided by
// the samples of the whole step.
torch::Tensor micro_step_loss(Model& model, const Batch& batch, int micro_step) {
  const auto inputs = batch.inputs.narrow(0, micro_step * kMicroBatch, kMicroBatch);
  const auto targets = batch.targets.narrow(0, micro_step * kMicroBatch, kMicroBatch);
  namespace F = torch::nn::functional;
  return F::cross_entropy(model.forward(inputs), targets, F::CrossEntropyFuncOptions().reduction(torch::kSum)) /
         static_cast<double>(kBatch);
}

std::vector<torch::Tensor> gradients(const Model& model, double factor = 1) {
  std::vector<torch::Tensor> result;
  for (const auto& p : model.parameters()) result.push_back(p.grad().detach().to(torch::kCPU, torch::kDouble) * factor);
  return result;
}

// One optimizer step's gradient, by the reducer's protocol.
std::vector<torch::Tensor> reduced_gradients(Model& model, GradientReducer& reducer, const Batch& batch) {
  reducer.zero_grad();
  for (int micro_step = 0; micro_step < kAccum; ++micro_step) {
    reducer.begin_micro_step(micro_step == kAccum - 1);
    micro_step_loss(model, batch, micro_step).backward();
  }
  reducer.finish();
  return gradients(model);
}

// Plain PyTorch: the same micro-batches, accumulated into .grad by autograd.
void plain_backward(Model& model, const Batch& batch) {
  model.zero_grad();
  for (int micro_step = 0; micro_step < kAccum; ++micro_step) micro_step_loss(model, batch, micro_step).backward();
}

// Plain PyTorch in one pass: the mean loss over the whole batch.
void one_pass_backward(Model& model, const Batch& batch) {
  model.zero_grad();
  torch::nn::functional::cross_entropy(model.forward(batch.inputs), batch.targets).backward();
}

// ||a - b|| / ||b|| per tensor.
std::vector<double> relative_differences(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  std::vector<double> result;
  for (size_t i = 0; i < a.size(); ++i) result.push_back((a[i] - b[i]).norm().item<double>() / b[i].norm().item<double>());
  return result;
}

double worst_relative_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (double d : relative_differences(a, b)) worst = std::max(worst, d);
  return worst;
}

struct Bucketing {
  int64_t first_bucket_bytes, bucket_bytes;
  size_t buckets_min, buckets_max;
  const char* name;
};
const Bucketing kBucketings[] = {
    {1 << 20, 25 << 20, 1, 1, "one bucket"},
    {16 << 10, 64 << 10, 2, 5, "16 KiB, then 64 KiB buckets"},
    {1, 1, 6, 6, "a bucket per tensor"},
};

void expect_fp32_wire_gives_plain_gradients(Communicator& comm, int ranks, torch::Device device) {
  // References: plain PyTorch on the same device, per batch.
  const Batch batches[] = {make_batch(101, device), make_batch(102, device)};
  std::vector<std::vector<torch::Tensor>> plain, one_pass;
  auto reference = make_mlp(device);
  for (const auto& batch : batches) {
    plain_backward(*reference, batch);
    plain.push_back(gradients(*reference, ranks));
    one_pass_backward(*reference, batch);
    one_pass.push_back(gradients(*reference, ranks));
  }
  const bool communicates = comm.world_size() > 1;
  for (const auto& bucketing : kBucketings) {
    for (bool overlap : {true, false}) {
      auto model = make_mlp(device);
      GradientReducer reducer(model->parameters(), comm,
                              {bucketing.first_bucket_bytes, bucketing.bucket_bytes, overlap, torch::kFloat});
      const auto buckets = static_cast<int64_t>(reducer.num_buckets());
      EXPECT_GE(reducer.num_buckets(), bucketing.buckets_min) << bucketing.name;
      EXPECT_LE(reducer.num_buckets(), bucketing.buckets_max) << bucketing.name;
      comm.reset_stats();
      for (size_t b = 0; b < std::size(batches); ++b) {
        const auto reduced = reduced_gradients(*model, reducer, batches[b]);
        const std::string where = std::string(bucketing.name) + ", overlap " + (overlap ? "on" : "off") + ", " +
                                  describe(comm, ranks) + ", step " + std::to_string(b);
        EXPECT_LT(worst_relative_difference(reduced, plain[b]), 1e-6) << where;
        EXPECT_LT(worst_relative_difference(reduced, one_pass[b]), 1e-5) << where << " (one pass)";
        EXPECT_EQ(reducer.buckets_started_in_backward(), communicates && overlap ? buckets : 0) << where;
      }
      EXPECT_EQ(comm.stats().all_reduce_calls, communicates ? 2 * buckets : 0) << describe(comm, ranks);
    }
  }
}

void expect_16_bit_wires_stay_close(Communicator& comm, int ranks, torch::Device device) {
  const Batch batch = make_batch(103, device);
  auto reference = make_mlp(device);
  plain_backward(*reference, batch);
  const auto plain = gradients(*reference, ranks);
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    auto model = make_mlp(device);
    GradientReducer reducer(model->parameters(), comm, {16 << 10, 64 << 10, true, dtype});
    comm.reset_stats();
    const auto reduced = reduced_gradients(*model, reducer, batch);
    EXPECT_EQ(comm.stats().all_reduce_bytes, comm.world_size() > 1 ? reducer.bytes() / 2 : 0)
        << c10::toString(dtype) << ", " << describe(comm, ranks);
    const auto errors = relative_differences(reduced, plain);
    for (size_t i = 0; i < errors.size(); ++i) {
      // The tolerances of Reducer.ReducedPrecisionHalvesTheBytesAndStaysClose.
      EXPECT_LT(errors[i], dtype == torch::kHalf ? 2e-3 : 1e-2)
          << c10::toString(dtype) << " parameter " << i << ", " << describe(comm, ranks);
      EXPECT_GT(errors[i], 0) << "a 16-bit wire must round something";
    }
  }
}

// One trainer step with clipping at a quarter of the gradient norm, on a
// global batch of 96 (any world size of 1 to 4 divides it with 2 micro-steps).
void expect_trainer_norm_and_clipping_match_pytorch(Communicator& comm, Communicator& control, torch::Device device) {
  const Dataset data = make_synthetic(480, 48, 10, /*seed=*/3);
  Config config = parse_options({"--dataset", "synthetic", "--hidden", "64,32", "--seed", "7", "--lr", "0.1",
                                 "--momentum", "0", "--weight-decay", "0", "--bucket-cap-mb", "0.01"})
                      .config;
  const BatchPlan plan = derive_batch_plan(0, 2, 96, comm.world_size());

  // Plain PyTorch on the global batch of step 0: every rank's micro-batches.
  const auto permutation = epoch_permutation(data.train.size(), config.run.seed, 0, config.run.shuffle);
  std::vector<int64_t> indices;
  for (int rank = 0; rank < comm.world_size(); ++rank) {
    for (int64_t micro_step = 0; micro_step < plan.grad_accum_steps; ++micro_step) {
      for (int64_t i : micro_batch_indices(permutation, plan, 0, micro_step, rank)) indices.push_back(i);
    }
  }
  ASSERT_EQ(static_cast<int64_t>(indices.size()), plan.global_batch_size);
  const auto index_tensor = torch::tensor(indices, torch::kLong);
  torch::manual_seed(config.run.seed);
  auto reference = make_model(config.model, data.input_shape, data.num_classes);
  reference->to(device);
  torch::nn::functional::cross_entropy(reference->forward(data.train.inputs.index_select(0, index_tensor).to(device)),
                                       data.train.targets.index_select(0, index_tensor).to(device))
      .backward();
  double sum_of_squares = 0;
  for (const auto& g : gradients(*reference)) sum_of_squares += g.square().sum().item<double>();
  const double norm = std::sqrt(sum_of_squares);
  const double clip = norm / 4;
  const double pytorch_norm = torch::nn::utils::clip_grad_norm_(reference->parameters(), clip);
  EXPECT_NEAR(pytorch_norm, norm, 1e-5 * norm);
  const auto clipped = gradients(*reference);
  double clipped_sum_of_squares = 0;
  for (const auto& g : clipped) clipped_sum_of_squares += g.square().sum().item<double>();
  const double clipped_norm = std::sqrt(clipped_sum_of_squares);  // clip * norm / (norm + 1e-6)

  config.optimizer.grad_clip_norm = clip;
  torch::manual_seed(config.run.seed);
  auto model = make_model(config.model, data.input_shape, data.num_classes);
  model->to(device);
  Trainer trainer(config, plan, comm, control, data, model);
  trainer.broadcast_initial_state();
  const StepResult result = trainer.train_step(0, /*compute_grad_norm=*/true);
  ASSERT_EQ(result.verdict, StepVerdict::Update);
  EXPECT_GT(trainer.reducer().num_buckets(), 1u);
  EXPECT_NEAR(result.grad_norm, pytorch_norm, 1e-5 * pytorch_norm) << "the norm before clipping";
  // The optimizer step leaves the gradients as clipping left them.
  EXPECT_LT(worst_relative_difference(gradients(*model), clipped), 1e-5) << "the clipped gradients";
  EXPECT_NEAR(trainer.reducer().grad_norm(), clipped_norm, 1e-5 * clipped_norm) << "the norm after clipping";
}

#ifdef DTRAIN_HAVE_NCCL
torch::Device my_gpu() { return {torch::kCUDA, static_cast<c10::DeviceIndex>(world().local_rank())}; }
#endif

TEST(ReducerGpu, Fp32WireGivesPyTorchsGradientsForEveryBucketingWithAndWithoutOverlap) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
  NcclCommunicator nccl(world(), world().local_rank());
  for_each_path(nccl, [](Communicator& comm, int ranks) { expect_fp32_wire_gives_plain_gradients(comm, ranks, my_gpu()); });
#endif
}

TEST(ReducerGpu, Bf16AndFp16WiresStayWithinTheirRounding) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
  NcclCommunicator nccl(world(), world().local_rank());
  for_each_path(nccl, [](Communicator& comm, int ranks) { expect_16_bit_wires_stay_close(comm, ranks, my_gpu()); });
#endif
}

TEST(ReducerGpu, TrainerGradNormAndClippingMatchClipGradNorm) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
  NcclCommunicator nccl(world(), world().local_rank());
  expect_trainer_norm_and_clipping_match_pytorch(nccl, world(), my_gpu());
#endif
}

TEST(ReducerCpu, Fp32WireGivesPyTorchsGradientsForEveryBucketingWithAndWithoutOverlap) {
  for_each_path(world(), [](Communicator& comm, int ranks) {
    expect_fp32_wire_gives_plain_gradients(comm, ranks, torch::kCPU);
  });
}

TEST(ReducerCpu, Bf16AndFp16WiresStayWithinTheirRounding) {
  for_each_path(world(), [](Communicator& comm, int ranks) { expect_16_bit_wires_stay_close(comm, ranks, torch::kCPU); });
}

TEST(ReducerCpu, TrainerGradNormAndClippingMatchClipGradNorm) {
  expect_trainer_norm_and_clipping_match_pytorch(world(), world(), torch::kCPU);
}

}  // namespace
}  // namespace dtrain
