// The trainer's gradient noise scale inputs (run/noise_scale.h) against an
// independent computation: every micro-batch's per-sample mean gradient by
// plain autograd, one by one, on one process. This checks what the closed-form
// test of the estimator cannot: the normalization (loss summed over the global
// batch), the accumulation (a micro-batch's gradient as the difference of the
// buckets), the overlapped last micro-step and the scalar all-reduce.
#include "cli/options.h"
#include "comm/communicator.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "models/models.h"
#include "test_world.h"
#include "train/trainer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace dtrain {
namespace {

using testing::world;

const Dataset& noise_data() {
  static const Dataset dataset = make_synthetic(96, 16, 10, /*seed=*/3);
  return dataset;
}

// The per-sample mean gradient of `indices` at the model's weights, flat.
torch::Tensor mean_gradient(Model& model, const std::vector<int64_t>& indices) {
  model.zero_grad();
  const auto index = torch::tensor(indices, torch::kLong);
  const auto logits = model.forward(noise_data().train.inputs.index_select(0, index));
  torch::nn::functional::cross_entropy(logits, noise_data().train.targets.index_select(0, index)).backward();
  std::vector<torch::Tensor> flat;
  for (const auto& p : trainable_parameters(model)) flat.push_back(p.grad().reshape({-1}).clone());
  return torch::cat(flat).to(torch::kDouble);
}

TEST(NoiseScale, TrainerMeasuresEachMicroBatchAndTheGlobalBatch) {
  const int world_size = world().world_size();
  Config config = parse_options({"--dataset", "synthetic", "--hidden", "32", "--seed", "5", "--noise-scale", "true"}).config;
  // (micro, accum): accumulation and overlap both exercised; W x k >= 2.
  const std::pair<int64_t, int64_t> splits[] = {{8, 2}, {4, 3}, {16, 1}};
  for (const auto& [micro, accum] : splits) {
    if (world_size * accum < 2) continue;
    for (const Switch overlap : {Switch::On, Switch::Off}) {
      SCOPED_TRACE("micro " + std::to_string(micro) + " accum " + std::to_string(accum) + " overlap " +
                   to_string(overlap));
      config.distributed.overlap = overlap;
      const BatchPlan plan = derive_batch_plan(micro, accum, 0, world_size);
      torch::manual_seed(11);
      auto model = make_model(config.model, noise_data().input_shape, noise_data().num_classes);
      auto reference = make_model(config.model, noise_data().input_shape, noise_data().num_classes);
      {
        torch::NoGradGuard no_grad;
        const auto from = model->parameters();
        const auto to = reference->parameters();
        for (size_t i = 0; i < from.size(); ++i) to[i].copy_(from[i]);
      }
      Trainer trainer(config, plan, world(), noise_data(), model);
      // Step 1 of the run (the second global batch), without an update.
      const StepResult result = trainer.train_step(1, /*compute_grad_norm=*/true, /*update=*/false);
      ASSERT_TRUE(result.noise_measured);

      // The same step by hand: every rank's every micro-batch.
      const int64_t per_epoch = steps_per_epoch(noise_data().train.size(), plan);
      const auto permutation = epoch_permutation(noise_data().train.size(), config.run.seed, 1 / per_epoch, config.run.shuffle);
      double small_sum = 0;
      std::vector<int64_t> all;
      for (int rank = 0; rank < world_size; ++rank) {
        for (int64_t m = 0; m < accum; ++m) {
          const auto indices = micro_batch_indices(permutation, plan, 1 % per_epoch, m, rank);
          small_sum += mean_gradient(*reference, indices).square().sum().item<double>();
          all.insert(all.end(), indices.begin(), indices.end());
        }
      }
      NoiseSample expected;
      expected.small_sq_norm = small_sum / static_cast<double>(world_size * accum);
      expected.big_sq_norm = mean_gradient(*reference, all).square().sum().item<double>();
      expected.small_batch = micro;
      expected.big_batch = plan.global_batch_size;
      const NoiseEstimate want = unbiased_estimate(expected);
      EXPECT_NEAR(result.grad_norm * result.grad_norm, expected.big_sq_norm, 1e-5 * expected.big_sq_norm);
      EXPECT_NEAR(result.noise.trace, want.trace, 1e-4 * std::abs(want.trace));
      EXPECT_NEAR(result.noise.grad_sq, want.grad_sq, 1e-4 * std::abs(want.trace));
      // And no update: the weights are where they were.
      const auto after = model->parameters();
      const auto before = reference->parameters();
      for (size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(after[i].equal(before[i]));
    }
  }
}

}  // namespace
}  // namespace dtrain
