// Shared (tied) parameters: trained once, kept in weight files under every
// name, and refused by --init-from when the names disagree.
#include "comm/communicator.h"
#include "common/error.h"
#include "data/dataset.h"
#include "io/weights.h"
#include "models/models.h"
#include "tied_model.h"
#include "data/batch_plan.h"
#include "ddp/reducer.h"
#include "train/trainer.h"
#include "cli/options.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>

namespace dtrain {
namespace {

using testing::TiedMlp;

TEST(Tied, TrainableParametersHoldEachTensorOnce) {
  TiedMlp model(8, 6, 3);
  EXPECT_EQ(model.parameters().size(), 8u) << "LibTorch lists the tied weight and bias twice";
  const auto unique = trainable_parameters(model);
  ASSERT_EQ(unique.size(), 6u);
  // In order of first appearance: input, block1, head.
  EXPECT_TRUE(unique[2].is_same(model.named_parameters()["block1.weight"]));
  EXPECT_TRUE(unique[4].is_same(model.named_parameters()["head.weight"]));
  // Weight files keep every name, as PyTorch's state_dict does.
  EXPECT_EQ(model_state(model).size(), 8u);
}

TEST(Tied, TheReducerRefusesATensorListedTwice) {
  TiedMlp model(8, 6, 3);
  LocalCommunicator comm;
  EXPECT_THROW(GradientReducer(model.parameters(), comm, ReducerOptions{}), Error);
  EXPECT_NO_THROW(GradientReducer(trainable_parameters(model), comm, ReducerOptions{}));
}

TEST(Tied, TrainingUpdatesTheTiedWeightOnceAndKeepsItShared) {
  torch::manual_seed(1);
  auto model = std::make_shared<TiedMlp>(784, 16, 10);
  const auto before = model->named_parameters()["block1.weight"].detach().clone();
  const Dataset data = make_synthetic(16, 8, 10, /*seed=*/2);
  Config config = parse_options({"--dataset", "synthetic", "--lr", "0.1", "--lr-scaling", "none", "--momentum", "0"}).config;
  LocalCommunicator comm;
  Trainer trainer(config, derive_batch_plan(16, 1, 0, 1), comm, data, model);
  trainer.train_step(0);
  auto named = model->named_parameters();
  EXPECT_TRUE(named["block1.weight"].is_same(named["block2.weight"]));
  // One SGD step without momentum moves the weight by exactly lr x grad: a
  // second update through the duplicate entry would double it.
  const auto moved = before - named["block1.weight"].detach();
  EXPECT_TRUE(torch::allclose(moved, 0.1 * named["block1.weight"].grad(), 1e-6, 1e-7));
}

TEST(Tied, InitFromRefusesTiedNamesWithDifferentValues) {
  const auto path = (std::filesystem::temp_directory_path() / ("dtrain_tied_" + std::to_string(::getpid()) + ".pt")).string();
  TiedMlp model(8, 6, 3);
  auto state = model_state(model);
  save_weights(state, path);
  TiedMlp other(8, 6, 3);
  EXPECT_NO_THROW(load_into(other, read_weights(path), path));
  EXPECT_TRUE(torch::equal(other.named_parameters()["block2.weight"], model.named_parameters()["block1.weight"]));

  for (auto& [name, tensor] : state) {
    if (name == "block2.weight") tensor = tensor.detach().clone() + 1;
  }
  save_weights(state, path);
  try {
    load_into(other, read_weights(path), path);
    ADD_FAILURE() << "accepted tied names with different values";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("different values for block1.weight and block2.weight"), std::string::npos) << message;
    EXPECT_NE(message.find(path), std::string::npos) << message;
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace dtrain
