// The central promise: for a fixed global batch, every split into
// (micro-batch, accumulation, world size) trains the same model, up to float
// rounding. Each rank computes the world-size-1 references itself with a
// LocalCommunicator, then trains the splits of the current world size
// together with the other ranks and compares. The Gpu tests prove the same on
// GPUs through NCCL, against the CPU reference, with TF32 off.
#include "cli/options.h"
#include "comm/communicator.h"
#include "comm/placement.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "data/text_dataset.h"
#include "ddp/reducer.h"
#include "models/models.h"
#include "skip.h"
#include "test_world.h"
#include "train/trainer.h"

#ifdef DTRAIN_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <random>

namespace dtrain {
namespace {

using testing::every_rank_has_a_gpu;
using testing::world;

constexpr int64_t kGlobalBatch = 32;
constexpr int kSteps = 3;

struct SplitCase {
  int64_t micro, accum, world;
};
// The table, plus one more split per world size.
const SplitCase kSplits[] = {{32, 1, 1}, {8, 4, 1}, {16, 1, 2}, {4, 4, 2}, {2, 4, 4}, {8, 1, 4}};

Config base_config(OptimizerKind optimizer) {
  Config config = parse_options({"--dataset", "synthetic", "--hidden", "48,24", "--seed", "7",
                                 "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "0.01"})
                      .config;
  config.optimizer.kind = optimizer;
  if (optimizer == OptimizerKind::AdamW || optimizer == OptimizerKind::Lamb) config.lr.lr = 0.01;
  if (optimizer == OptimizerKind::Lars) config.optimizer.trust_coefficient = 0.02;
  config.optimizer.eps = default_eps(optimizer);
  config.run.max_steps = kSteps;
  return config;
}

// 80 training samples: 2 steps per epoch at G = 32, so 3 steps cross an
// epoch boundary (a new permutation) and drop a tail.
const Dataset& data() {
  static const Dataset dataset = make_synthetic(80, 40, 10, /*seed=*/11);
  return dataset;
}

struct Trained {
  std::vector<torch::Tensor> weights;
  CommStats traffic;  // during the optimizer steps only
  int64_t gradient_bytes = 0;
  int64_t buckets = 0;
};

// config.run.max_steps optimizer steps.
Trained train(const Config& config, Communicator& comm, int64_t micro, int64_t accum,
              torch::Device device = torch::kCPU, const Dataset& dataset = data()) {
  const BatchPlan plan = derive_batch_plan(micro, accum, 0, comm.world_size());
  torch::manual_seed(config.run.seed + 1000 * comm.rank());  // ranks differ until the broadcast
  auto model = make_model(config.model, dataset.input_shape, dataset.num_classes);
  model->to(device);
  Trainer trainer(config, plan, comm, dataset, model);
  trainer.broadcast_initial_state();
  comm.reset_stats();
  for (int64_t step = 0; step < config.run.max_steps; ++step) trainer.train_step(step);
  Trained result;
  result.traffic = comm.stats();
  result.gradient_bytes = trainer.reducer().bytes();
  result.buckets = static_cast<int64_t>(trainer.reducer().num_buckets());
  for (const auto& p : model->parameters()) result.weights.push_back(p.detach().cpu().clone());
  return result;
}

// Largest ||a - b|| / ||b|| over the tensors.
double max_relative_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, (a[i] - b[i]).norm().item<double>() / b[i].norm().item<double>());
  }
  return worst;
}

void expect_all_splits_agree(OptimizerKind optimizer) {
  const Config config = base_config(optimizer);
  LocalCommunicator local;
  const Trained reference = train(config, local, 32, 1);

  // The comparison must be able to fail: a different global batch, or no
  // training at all, is far outside the tolerance.
  torch::manual_seed(config.run.seed);
  auto initial = make_model(config.model, data().input_shape, data().num_classes);
  std::vector<torch::Tensor> initial_weights;
  for (const auto& p : initial->parameters()) initial_weights.push_back(p.detach().clone());
  EXPECT_GT(max_relative_difference(initial_weights, reference.weights), 1e-3);
  EXPECT_GT(max_relative_difference(train(config, local, 16, 1).weights, reference.weights), 1e-4);

  // Bucketing must not matter either: one bucket (the default for this small
  // model), one bucket per parameter, a few buckets without overlap.
  const struct {
    double cap_mb;
    bool overlap;
  } bucketings[] = {{25, true}, {1e-9, true}, {0.05, false}};
  for (const auto& bucketing : bucketings) {
    Config bucketed = config;
    bucketed.distributed.bucket_cap_mb = bucketing.cap_mb;
    bucketed.distributed.overlap = bucketing.overlap ? Switch::On : Switch::Off;
    int compared = 0;
    for (const auto& split : kSplits) {
      ASSERT_EQ(split.micro * split.accum * split.world, kGlobalBatch);
      if (split.world != 1 && split.world != world().world_size()) continue;
      Communicator& comm = split.world == 1 ? static_cast<Communicator&>(local) : world();
      const auto result = train(bucketed, comm, split.micro, split.accum);
      EXPECT_LT(max_relative_difference(result.weights, reference.weights), 1e-5)
          << "micro " << split.micro << " accum " << split.accum << " world " << split.world << ", buckets of "
          << bucketing.cap_mb << " MiB, overlap " << bucketing.overlap;
      ++compared;
    }
    EXPECT_GE(compared, 2);
  }
}

TEST(Equivalence, SgdWithMomentumTrainsTheSameModelForEverySplit) {
  expect_all_splits_agree(OptimizerKind::Sgd);
}

TEST(Equivalence, AdamWTrainsTheSameModelForEverySplit) { expect_all_splits_agree(OptimizerKind::AdamW); }

// The large-batch optimizers' trust ratios use whole-tensor norms of the
// all-reduced gradient: the same on every split.
TEST(Equivalence, LarsTrainsTheSameModelForEverySplit) { expect_all_splits_agree(OptimizerKind::Lars); }

TEST(Equivalence, LambTrainsTheSameModelForEverySplit) { expect_all_splits_agree(OptimizerKind::Lamb); }

// Shallue et al.'s Simple CNN (models/models.h): convolutions, pooling and a
// wide dense layer agree across splits as the MLP does.
TEST(Equivalence, TheSimpleCnnTrainsTheSameModelForEverySplit) {
  Config config = base_config(OptimizerKind::Sgd);
  config.model.kind = ModelKind::SimpleCnn;
  LocalCommunicator local;
  const Trained reference = train(config, local, 32, 1);
  EXPECT_GT(max_relative_difference(train(config, local, 16, 1).weights, reference.weights), 1e-4);
  int compared = 0;
  for (const auto& split : kSplits) {
    if (split.world != 1 && split.world != world().world_size()) continue;
    Communicator& comm = split.world == 1 ? static_cast<Communicator&>(local) : world();
    EXPECT_LT(max_relative_difference(train(config, comm, split.micro, split.accum).weights, reference.weights), 1e-5)
        << "micro " << split.micro << " accum " << split.accum << " world " << split.world;
    ++compared;
  }
  EXPECT_GE(compared, 2);
}

TEST(Equivalence, OneAllReducePerBucketPerOptimizerStepWhateverTheAccumulation) {
  Config config = base_config(OptimizerKind::Sgd);
  const int64_t w = world().world_size();
  for (double cap_mb : {25.0, 0.001}) {
    config.distributed.bucket_cap_mb = cap_mb;
    for (int64_t accum : {int64_t{1}, int64_t{2}, kGlobalBatch / w}) {
      const Trained result = train(config, world(), kGlobalBatch / (w * accum), accum);
      // 1000-byte buckets: [head.bias, head.weight], then one bucket per tensor.
      EXPECT_EQ(result.buckets, cap_mb == 25.0 ? 1 : 5);
      // A world of one has nothing to communicate and calls nothing.
      const int64_t communicating_steps = w > 1 ? kSteps : 0;
      EXPECT_EQ(result.traffic.all_reduce_calls, communicating_steps * result.buckets) << "accum " << accum;
      EXPECT_EQ(result.traffic.all_reduce_bytes, communicating_steps * result.gradient_bytes) << "accum " << accum;
      EXPECT_EQ(result.traffic.broadcast_calls, 0);
    }
  }
  // The gradient bytes are the parameter bytes.
  torch::manual_seed(0);
  auto model = make_model(config.model, data().input_shape, data().num_classes);
  int64_t parameter_bytes = 0;
  for (const auto& p : model->parameters()) parameter_bytes += p.numel() * static_cast<int64_t>(p.element_size());
  EXPECT_EQ(train(config, world(), kGlobalBatch / w, 1).gradient_bytes, parameter_bytes);
}

#ifdef DTRAIN_TORCH_CUDA
// Full fp32 matmuls and convolutions while alive: TF32 rounds their inputs to
// 10 mantissa bits (about 1e-3), far beyond the tolerances here. The legacy
// switches, which LibTorch 2.x still has (2.9+ maps them onto its
// per-backend fp32 precision); global, so restored on exit.
class NoTf32 {
 public:
  NoTf32() : cublas_(at::globalContext().allowTF32CuBLAS()), cudnn_(at::globalContext().allowTF32CuDNN()) {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
  ~NoTf32() {
    at::globalContext().setAllowTF32CuBLAS(cublas_);
    at::globalContext().setAllowTF32CuDNN(cudnn_);
  }
  NoTf32(const NoTf32&) = delete;
  NoTf32& operator=(const NoTf32&) = delete;

 private:
  bool cublas_, cudnn_;
};
#endif

// Text of very different lengths (1 to 40 bytes, rows of block 16): the
// micro-batches of one global batch carry very different numbers of target
// tokens. The loss divides by the global batch's target tokens, so every split
// trains the same GPT; dividing per micro-batch (or per rank) would weight
// short rows too heavily and break the agreement.
const Dataset& text_data() {
  static const Dataset dataset = [] {
    std::mt19937 random(3);
    std::vector<std::string> documents;
    for (int i = 0; i < 120; ++i) {
      std::string document(1 + random() % 40, ' ');
      for (char& c : document) c = static_cast<char>('a' + random() % 6);
      documents.push_back(document);
    }
    return token_dataset("text", make_text_dataset(documents, 16, 0, 7, /*pack=*/false));
  }();
  return dataset;
}

Config gpt_config() {
  Config config = parse_options({"--dataset", "text", "--data-file", "unused.txt", "--model", "gpt", "--n-layer", "1",
                                 "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--seed", "7",
                                 "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "0.01"})
                      .config;
  config.optimizer.eps = default_eps(config.optimizer.kind);
  config.run.max_steps = kSteps;
  return config;
}

TEST(Equivalence, TokenWeightedLossTrainsTheSameGptForEverySplit) {
  const Dataset& text = text_data();
  const auto counts = text.train.target_counts;
  ASSERT_LT(counts.min().item<int64_t>(), 4);
  ASSERT_EQ(counts.max().item<int64_t>(), 16);
  const Config config = gpt_config();
  LocalCommunicator local;

  // The normalizer is the global batch's target tokens, read from the
  // permutation every rank holds.
  {
    const BatchPlan plan = derive_batch_plan(kGlobalBatch, 1, 0, 1);
    torch::manual_seed(config.run.seed);
    auto model = make_model(config.model, text.input_shape, text.num_classes);
    Trainer trainer(config, plan, local, text, model);
    const auto permutation = epoch_permutation(text.train.size(), config.run.seed, 0, config.run.shuffle);
    for (int64_t step = 0; step < 2; ++step) {
      int64_t tokens = 0;
      for (int64_t i = 0; i < kGlobalBatch; ++i) tokens += counts[permutation[step * kGlobalBatch + i]].item<int64_t>();
      EXPECT_EQ(trainer.train_step(step, false, /*update=*/false).loss_items, static_cast<double>(tokens));
      EXPECT_NE(tokens, kGlobalBatch);
    }
  }

  const Trained reference = train(config, local, kGlobalBatch, 1, torch::kCPU, text);
  EXPECT_GT(max_relative_difference(train(config, local, 16, 1, torch::kCPU, text).weights, reference.weights), 1e-4);
  int compared = 0;
  for (const auto& split : kSplits) {
    if (split.world != 1 && split.world != world().world_size()) continue;
    Communicator& comm = split.world == 1 ? static_cast<Communicator&>(local) : world();
    const auto result = train(config, comm, split.micro, split.accum, torch::kCPU, text);
    EXPECT_LT(max_relative_difference(result.weights, reference.weights), 1e-5)
        << "micro " << split.micro << " accum " << split.accum << " world " << split.world;
    ++compared;
  }
  EXPECT_GE(compared, 2);
}

// On GPUs through NCCL: the same model as the CPU reference, up to the
// rounding differences of GPU kernels. Runs on a GPU host (tests/gpu/);
// skips on every rank together elsewhere.
TEST(Equivalence, GpuSplitsMatchTheCpuReference) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
#ifdef DTRAIN_TORCH_CUDA
  const NoTf32 full_fp32;
#endif
  const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(world().local_rank()));
  NcclCommunicator nccl(world(), world().local_rank());
  for (auto optimizer : {OptimizerKind::Sgd, OptimizerKind::AdamW}) {
    const Config config = base_config(optimizer);
    LocalCommunicator local;
    const Trained reference = train(config, local, 32, 1);
    const int64_t w = nccl.world_size();
    for (int64_t accum : {int64_t{1}, kGlobalBatch / w}) {
      const auto result = train(config, nccl, kGlobalBatch / (w * accum), accum, device);
      EXPECT_LT(max_relative_difference(result.weights, reference.weights), 1e-4)
          << to_string(optimizer) << " accum " << accum << " world " << w;
    }
  }
#endif
}

// One GPU, as on a one-GPU host: each rank trains alone on its GPU through a
// NCCL world of one. 20 steps at a global batch of 256 (two epochs of a
// 2600-sample set: a new permutation and a dropped tail) as micro 32 x accum 8
// and as micro 256 x accum 1 give the same model to 1e-5, and both the CPU
// reference's to 1e-4, with TF32 off.
TEST(Equivalence, OneGpuAccumulationMatchesTheFullBatchAndTheCpuReference) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
#ifdef DTRAIN_TORCH_CUDA
  const NoTf32 full_fp32;
  ASSERT_FALSE(at::globalContext().allowTF32CuBLAS());
#endif
  const Dataset dataset = make_synthetic(2600, 64, 10, /*seed=*/11);
  Config config = base_config(OptimizerKind::Sgd);
  config.run.max_steps = 20;
  LocalCommunicator local;
  const Trained reference = train(config, local, 256, 1, torch::kCPU, dataset);

  const int gpu = world().local_rank();
  LocalCommunicator bootstrap;  // a world of one, whatever the MPI world
  NcclCommunicator nccl(bootstrap, gpu);
  ASSERT_EQ(nccl.world_size(), 1);
  const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(gpu));
  const Trained full_batch = train(config, nccl, 256, 1, device, dataset);
  const Trained accumulated = train(config, nccl, 32, 8, device, dataset);
  EXPECT_LT(max_relative_difference(accumulated.weights, full_batch.weights), 1e-5);
  EXPECT_LT(max_relative_difference(full_batch.weights, reference.weights), 1e-4);
  EXPECT_LT(max_relative_difference(accumulated.weights, reference.weights), 1e-4);

  // Training moved the weights far beyond those tolerances.
  torch::manual_seed(config.run.seed);
  auto initial = make_model(config.model, dataset.input_shape, dataset.num_classes);
  std::vector<torch::Tensor> initial_weights;
  for (const auto& p : initial->parameters()) initial_weights.push_back(p.detach().clone());
  EXPECT_GT(max_relative_difference(initial_weights, reference.weights), 1e-2);
#endif
}

}  // namespace
}  // namespace dtrain
