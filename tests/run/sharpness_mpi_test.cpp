// Sharpness through the trainer (--measure-sharpness) at this world size
// against the same measurement on one process: the ranks' blocks summed in
// float64 must give the value one process gives, within 1e-5 (ctest runs
// this at 1, 2 and 4 ranks). The weights must be where they were, and the
// GPT must be measured with its explicit attention (fused kernels have no
// double backward) and left with the kernel it had.
#include "cli/options.h"
#include "comm/communicator.h"
#include "data/dataset.h"
#include "data/text_dataset.h"
#include "models/gpt.h"
#include "models/models.h"
#include "test_world.h"
#include "train/trainer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <random>

namespace dtrain {
namespace {

using testing::world;

std::shared_ptr<Model> copy_of(const Config& config, const Dataset& data, const Model& from) {
  auto model = make_model(config.model, data.input_shape, data.num_classes);
  torch::NoGradGuard no_grad;
  const auto source = from.parameters();
  const auto target = model->parameters();
  for (size_t i = 0; i < source.size(); ++i) target[i].copy_(source[i]);
  return model;
}

void expect_same_on_every_world(const Config& config, const Dataset& data, int64_t micro, int64_t samples) {
  const int world_size = world().world_size();
  torch::manual_seed(config.run.seed);
  auto model = make_model(config.model, data.input_shape, data.num_classes);
  auto reference = copy_of(config, data, *model);
  auto untouched = copy_of(config, data, *model);

  Trainer trainer(config, derive_batch_plan(micro, 1, 0, world_size), world(), data, model);
  const nlohmann::json here = trainer.measure_sharpness(samples);
  LocalCommunicator local;
  Trainer alone(config, derive_batch_plan(micro, 1, 0, 1), local, data, reference);
  const nlohmann::json one = alone.measure_sharpness(samples);

  const double value = here["top_eigenvalue"].get<double>();
  EXPECT_TRUE(std::isfinite(value));
  EXPECT_NEAR(value, one["top_eigenvalue"].get<double>(), 1e-5 * std::abs(value));
  EXPECT_EQ(here["iterations"], one["iterations"]);
  EXPECT_EQ(here["samples"].get<int64_t>(), samples);
  const auto after = model->parameters();
  const auto before = untouched->parameters();
  for (size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(after[i].equal(before[i]));
  EXPECT_TRUE(model->is_training());
}

TEST(Sharpness, TheSameAtEveryWorldSizeForTheMlpAndTheCnns) {
  const Dataset data = make_synthetic(96, 16, 10, /*seed=*/3);
  // (model, iterations, micro-batch = block, samples): blocks uneven over 2
  // and 4 ranks; the Simple CNN (3.3 M parameters) briefly.
  const struct {
    const char* kind;
    const char* iterations;
    int64_t block, samples;
  } cases[] = {{"mlp", "20", 6, 40}, {"cnn", "8", 6, 40}, {"simple-cnn", "4", 3, 13}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.kind);
    Config config = parse_options({"--dataset", "synthetic", "--model", c.kind, "--hidden", "16", "--seed", "5",
                                   "--sharpness-iterations", c.iterations, "--sharpness-tolerance", "0"})
                        .config;
    expect_same_on_every_world(config, data, c.block, c.samples);
  }
}

TEST(Sharpness, TheGptIsMeasuredOnItsExplicitPathAndPutBack) {
  std::mt19937 random(3);
  std::vector<std::string> documents;
  for (int i = 0; i < 40; ++i) {
    std::string document(1 + random() % 30, ' ');
    for (char& c : document) c = static_cast<char>('a' + random() % 6);
    documents.push_back(document);
  }
  const Dataset text = token_dataset("text", make_text_dataset(documents, 16, 0, 7, /*pack=*/false));
  Config config = parse_options({"--dataset", "text", "--data-file", "unused.txt", "--model", "gpt", "--n-layer",
                                 "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--seed", "7",
                                 "--sharpness-iterations", "10", "--sharpness-tolerance", "0"})
                      .config;
  expect_same_on_every_world(config, text, 4, 12);
  // The kernel and checkpointing the model had are restored.
  torch::manual_seed(1);
  auto model = make_model(config.model, text.input_shape, text.num_classes);
  auto* gpt = dynamic_cast<Gpt*>(model.get());
  ASSERT_NE(gpt, nullptr);
  gpt->set_activation_checkpointing(true);
  LocalCommunicator local;
  Trainer trainer(config, derive_batch_plan(4, 1, 0, 1), local, text, model);
  const AttentionKernel kernel = gpt->attention_kernel();
  trainer.measure_sharpness(8);
  EXPECT_EQ(gpt->attention_kernel(), kernel);
  EXPECT_TRUE(gpt->activation_checkpointing());
}

}  // namespace
}  // namespace dtrain
