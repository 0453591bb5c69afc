#include "cli/options.h"

#include "common/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace dtrain {
namespace {

Config parse(std::vector<std::string> args) { return parse_options(args).config; }

TEST(Options, DefaultsAndFlagsLandInTheTypedConfig) {
  const Config c = parse({"--micro-batch-size", "64", "--grad-accum-steps", "4", "--lr", "0.2",
                          "--lr-scaling", "sqrt", "--schedule", "step", "--lr-milestones", "30,60",
                          "--optimizer", "adamw", "--betas", "0.8,0.95", "--hidden", "128,64,32",
                          "--shuffle", "false", "--dataset", "synthetic", "--model", "cnn"});
  EXPECT_EQ(c.batch.micro_batch_size, 64);
  EXPECT_EQ(c.batch.grad_accum_steps, 4);
  EXPECT_EQ(c.batch.global_batch_size, 0);
  EXPECT_DOUBLE_EQ(c.lr.lr, 0.2);
  EXPECT_EQ(c.lr.base_batch_size, 256);
  EXPECT_EQ(c.lr.scaling, LrScaling::Sqrt);
  EXPECT_EQ(c.lr.schedule, LrScheduleKind::Step);
  EXPECT_EQ(c.lr.milestones_epochs, (std::vector<double>{30, 60}));
  EXPECT_EQ(c.optimizer.kind, OptimizerKind::AdamW);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);
  EXPECT_EQ(c.model.hidden, (std::vector<int64_t>{128, 64, 32}));
  EXPECT_EQ(c.model.kind, ModelKind::Cnn);
  EXPECT_FALSE(c.run.shuffle);
  EXPECT_EQ(c.data.dataset, DatasetKind::Synthetic);
}

TEST(Options, HelpListsGroupsAndExits) {
  const ParsedOptions parsed = parse_options({"--help"});
  EXPECT_TRUE(parsed.help_requested);
  for (const char* group : {"Batch", "Learning rate", "Optimizer", "Run", "Data and model", "Weights"}) {
    EXPECT_NE(parsed.help_text.find(group), std::string::npos) << group;
  }
  EXPECT_NE(parsed.help_text.find("--grad-accum-steps"), std::string::npos);
}

TEST(Options, ConfigFileIsReadAndTheCommandLineWins) {
  const auto path = std::filesystem::temp_directory_path() / ("dtrain_opts_" + std::to_string(::getpid()) + ".ini");
  {
    std::ofstream ini(path);
    ini << "# comment\nmicro-batch-size = 32\nlr = 0.05\nepochs = 3\nhidden = 64\n";
  }
  const Config c = parse({"--config", path.string(), "--lr", "0.5"});
  EXPECT_EQ(c.batch.micro_batch_size, 32);
  EXPECT_DOUBLE_EQ(c.lr.lr, 0.5);
  EXPECT_EQ(c.run.epochs, 3);
  EXPECT_EQ(c.model.hidden, (std::vector<int64_t>{64}));
  {
    std::ofstream ini(path);
    ini << "micro-batch-size = 32\nlearning-rate = 0.05\n";
  }
  EXPECT_THROW(parse({"--config", path.string()}), UsageError);
  std::filesystem::remove(path);
}

TEST(Options, BadInputGivesOneLineNamingTheProblem) {
  struct Case { std::vector<std::string> args; const char* must_mention; };
  const Case cases[] = {
      {{"--no-such-flag"}, "no-such-flag"},
      {{"--lr", "abc"}, "lr"},
      {{"--lr", "-1"}, "--lr must be positive"},
      {{"--micro-batch-size", "0"}, "--micro-batch-size must be positive"},
      {{"--global-batch-size", "-8"}, "--global-batch-size must be positive"},
      {{"--lr-scaling", "cubic"}, "--lr-scaling cubic is not one of linear|sqrt|none"},
      {{"--schedule", "exp"}, "constant|cosine|linear|step"},
      {{"--schedule", "step"}, "--schedule step needs --lr-milestones"},
      {{"--lr-milestones", "60,30", "--schedule", "step"}, "increasing"},
      {{"--optimizer", "lion"}, "sgd|adamw"},
      {{"--hidden", "512,x"}, "comma-separated list"},
      {{"--hidden", "512,0"}, "--hidden widths must be positive"},
      {{"--betas", "0.9"}, "--betas needs two numbers"},
      {{"--momentum", "1.5"}, "--momentum must be in [0, 1)"},
      {{"--warmup-steps", "5", "--warmup-epochs", "1"}, "not both"},
      {{"--threads", "0"}, "--threads must be between 1 and 1024"},
      {{"--shuffle", "maybe"}, "shuffle"},
      {{"--config", "/nonexistent/x.ini"}, "cannot open config file /nonexistent/x.ini"},
      {{"stray"}, "stray"},
      {{"--dataset", "cifar"}, "fashion-mnist|synthetic"},
      {{"--lr", "inf"}, "--lr must be a finite number"},
      {{"--bucket-cap-mb", "1e300"}, "at most 1e6"},
      {{"--eps", "0"}, "--eps must be positive"},
      {{"--threads", "100000"}, "--threads must be between 1 and 1024"},
      {{"--config", "/tmp"}, "cannot open config file /tmp"},
      {{"--overlap", "sometimes"}, "auto|true|false"},
  };
  for (const auto& c : cases) {
    try {
      parse(c.args);
      ADD_FAILURE() << "accepted: " << c.args.front();
    } catch (const UsageError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(c.must_mention), std::string::npos) << message << " / wanted: " << c.must_mention;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
  }
}

TEST(Options, ResolvedConfigRoundTripsThroughIni) {
  const Config original = parse({"--micro-batch-size", "16", "--grad-accum-steps", "2", "--lr", "0.3",
                                 "--hidden", "100,50", "--schedule", "cosine", "--seed", "9"});
  const auto path = std::filesystem::temp_directory_path() / ("dtrain_rt_" + std::to_string(::getpid()) + ".ini");
  {
    std::ofstream ini(path);
    ini << config_to_ini(original);
  }
  const Config again = parse({"--config", path.string()});
  std::filesystem::remove(path);
  EXPECT_EQ(config_to_json(again), config_to_json(original));
  EXPECT_EQ(config_hash(again), config_hash(original));
  EXPECT_NE(config_hash(parse({"--seed", "1"})), config_hash(parse({"--seed", "2"})));
}

}  // namespace
}  // namespace dtrain
