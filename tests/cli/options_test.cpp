#include "cli/options.h"

#include "cli/option_table.h"
#include "common/error.h"
#include "data/batch_plan.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace dtrain {
namespace {

Config parse(std::vector<std::string> args) { return parse_options(args).config; }

// A file in the temporary folder, removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& content, const std::string& suffix = ".ini")
      : path_(std::filesystem::temp_directory_path() /
              ("dtrain_opts_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++) + suffix)) {
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  std::string path() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

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
  EXPECT_EQ(c.optimizer.betas, (std::vector<double>{0.8, 0.95}));
  EXPECT_EQ(c.model.hidden, (std::vector<int64_t>{128, 64, 32}));
  EXPECT_EQ(c.model.kind, ModelKind::Cnn);
  EXPECT_FALSE(c.run.shuffle);
  EXPECT_EQ(c.data.dataset, DatasetKind::Synthetic);
}

TEST(Options, MemorySizesAndAutoMicroBatch) {
  EXPECT_EQ(parse({"--memory-budget", "6GiB"}).batch.memory_budget, int64_t{6} << 30);
  EXPECT_EQ(parse({"--memory-budget", "1.5GB"}).batch.memory_budget, 1500000000);
  EXPECT_EQ(parse({"--memory-budget", "512m"}).batch.memory_budget, int64_t{512} << 20);
  EXPECT_EQ(parse({"--memory-budget", "1000000"}).batch.memory_budget, 1000000);
  const Config config = parse({"--micro-batch-size", "auto", "--global-batch-size", "256"});
  EXPECT_EQ(config.batch.micro_batch_size, kAutoMicroBatch);
  EXPECT_EQ(config_to_json(config)["micro-batch-size"], "auto");
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

// The batch options on the command line override the file's as a group.
TEST(Options, CommandLineBatchOptionsOverrideTheFilesAsAGroup) {
  const TempFile ini("micro-batch-size = 128\ngrad-accum-steps = 1\nlr = 0.1\n");
  // The README's example: the file's micro-batch stays, accumulation is derived.
  Config c = parse({"--config", ini.path(), "--global-batch-size", "1024"});
  EXPECT_EQ(c.batch.micro_batch_size, 128);
  EXPECT_EQ(c.batch.grad_accum_steps, 0);
  EXPECT_EQ(c.batch.global_batch_size, 1024);
  EXPECT_EQ(derive_batch_plan(c.batch.micro_batch_size, c.batch.grad_accum_steps, c.batch.global_batch_size, 2)
                .grad_accum_steps, 4);
  // A micro-batch alone keeps the file's accumulation.
  c = parse({"--config", ini.path(), "--micro-batch-size", "64"});
  EXPECT_EQ(c.batch.micro_batch_size, 64);
  EXPECT_EQ(c.batch.grad_accum_steps, 1);
  EXPECT_EQ(c.batch.global_batch_size, 0);
  // Two on the command line: the file's batch options are all set aside.
  c = parse({"--config", ini.path(), "--global-batch-size", "512", "--grad-accum-steps", "8"});
  EXPECT_EQ(c.batch.micro_batch_size, 0);
  EXPECT_EQ(c.batch.grad_accum_steps, 8);
  EXPECT_EQ(c.batch.global_batch_size, 512);
  // A file that gives the global batch keeps it when the command line gives accumulation.
  const TempFile global_ini("global-batch-size = 4096\nmicro-batch-size = 128\n");
  c = parse({"--config", global_ini.path(), "--grad-accum-steps", "4"});
  EXPECT_EQ(c.batch.global_batch_size, 4096);
  EXPECT_EQ(c.batch.micro_batch_size, 0);
  // Where the command line itself is inconsistent, the split is refused.
  c = parse({"--config", ini.path(), "--global-batch-size", "1000", "--micro-batch-size", "128",
             "--grad-accum-steps", "4"});
  EXPECT_THROW(derive_batch_plan(c.batch.micro_batch_size, c.batch.grad_accum_steps, c.batch.global_batch_size, 2),
               UsageError);
  // Without batch options on the command line, the file's stand.
  c = parse({"--config", ini.path(), "--lr", "0.2"});
  EXPECT_EQ(c.batch.micro_batch_size, 128);
  EXPECT_EQ(c.batch.grad_accum_steps, 1);
}

TEST(Options, BadInputGivesOneLineNamingTheProblem) {
  struct Case { std::vector<std::string> args; const char* must_mention; };
  const Case cases[] = {
      {{"--no-such-flag"}, "no-such-flag"},
      {{"--lr", "abc"}, "lr"},
      {{"--lr", "-1"}, "--lr must be positive"},
      {{"--micro-batch-size", "0"}, "--micro-batch-size must be positive"},
      {{"--micro-batch-size", "auto"}, "--micro-batch-size auto needs --global-batch-size"},
      {{"--micro-batch-size", "auto", "--global-batch-size", "64", "--grad-accum-steps", "2"},
       "derives --grad-accum-steps: leave it out"},
      {{"--memory-budget", "6XB"}, "is not a size (examples: --memory-budget 6GiB"},
      {{"--memory-budget", "0"}, "--memory-budget must be at least 1 byte"},
      {{"--memory-budget", "-2GiB"}, "--memory-budget must be at least 1 byte"},
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
      {{"--threads", "0"}, "--threads must be auto or between 1 and 1024"},
      {{"--shuffle", "maybe"}, "shuffle"},
      {{"--config", "/nonexistent/x.ini"}, "cannot open config file /nonexistent/x.ini"},
      {{"stray"}, "stray"},
      {{"--dataset", "cifar"}, "fashion-mnist|synthetic"},
      {{"--lr", "inf"}, "--lr must be a finite number"},
      {{"--bucket-cap-mb", "1e300"}, "--bucket-cap-mb must be in (0, 1000000]"},
      {{"--eps", "0"}, "--eps must be auto or positive"},
      {{"--target", "val_accuracy"}, "has no ':'"},
      {{"--target", "top5:0.9"}, "unknown metric 'top5'"},
      {{"--target", "test_accuracy:high"}, "no number after ':'"},
      {{"--target", "test_accuracy:88"}, "accuracy target must be in (0, 1]"},
      {{"--target", "val_loss:0.3"}, "needs a validation split: add --validation-size"},
      {{"--eval-schedule", "geometric:0"}, "geometric:K"},
      {{"--eval-schedule", "log"}, "fixed (--eval-every"},
      {{"--noise-scale-ema", "1"}, "--noise-scale-ema must be in [0, 1)"},
      {{"--optimizer", "lion"}, "sgd|adamw|lars|lamb"},
      {{"--threads", "100000"}, "--threads must be auto or between 1 and 1024"},
      {{"--seed", "-1"}, "--seed must be a non-negative integer (got -1)"},
      {{"--synthetic-seed", "-5"}, "--synthetic-seed must be a non-negative integer"},
      {{"--epochs", "99999999999999999999"}, "--epochs 99999999999999999999 is out of range"},
      {{"--epochs", "3.5"}, "--epochs '3.5' is not an integer"},
      {{"--lr", "0.1", "--lr", "0.2"}, "--lr is given twice"},
      {{"--hidden", "512,"}, "ends with a comma"},
      {{"--min-lr", "+-0"}, "--min-lr '+-0' is not a number"},
      {{"--epochs", "+-3"}, "--epochs '+-3' is not an integer"},
      {{"--out-dir", "runs/#3"}, "holds a '#'"},
      {{"--export", " a.pt"}, "blanks at its ends"},
      {{"--config", ""}, "cannot open config file"},
      {{"--config", "", "--config", "x.ini"}, "--config is given twice"},
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

TEST(Options, ConfigFileErrorsNameTheFileAndLine) {
  struct Case { std::string content; std::string must_mention; };
  const Case cases[] = {
      {"lr = 0.1\nlearning_rate = 0.05\n", ":2: unknown option 'learning_rate'"},
      {"# ok\n\nepochs = -3\n", ":3: --epochs must be >= 0 (got -3)"},
      {"seed = 1\nseed = 2\n", ":2: seed is already set at"},
      {"[train]\nlr = 0.1\n", ":1: sections like '[train]' are not supported"},
      {"just words\n", ":1: 'just words' is not a `name = value` line"},
      {std::string("PK\x03\x04\x00\x00binary", 12), ":1: binary data"},
      {"lr = \x01\x02" "abc\n", "\\x01\\x02abc"},
  };
  for (const auto& c : cases) {
    const TempFile file(c.content);
    try {
      parse({"--config", file.path()});
      ADD_FAILURE() << "accepted: " << c.content;
    } catch (const UsageError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(file.path()), std::string::npos) << message;
      EXPECT_NE(message.find(c.must_mention), std::string::npos) << message << " / wanted: " << c.must_mention;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      EXPECT_LT(message.size(), 300u) << message;
      for (unsigned char byte : message) EXPECT_TRUE(byte >= 0x20 && byte < 0x7f) << message;
    }
  }
}

// The option table is complete: every row has a help line, a group, an
// effect class and an example that differs from its default, and names are
// unique; --help lists them all.
TEST(OptionTable, EveryRowIsCompleteAndInHelp) {
  const Config defaults;
  const std::string help = parse_options({"--help"}).help_text;
  std::set<std::string> names, groups;
  for (const auto& group : option_groups()) groups.insert(group.name);
  for (const auto& spec : option_table()) {
    SCOPED_TRACE(spec.name);
    EXPECT_TRUE(names.insert(spec.name).second) << "declared twice";
    EXPECT_FALSE(spec.help.empty());
    EXPECT_TRUE(groups.count(spec.group)) << spec.group;
    EXPECT_TRUE(spec.effect == Effect::Exact || spec.effect == Effect::Rounding || spec.effect == Effect::None);
    EXPECT_NE(spec.example, spec.text(defaults)) << "the example must not be the default";
    EXPECT_NE(help.find("--" + spec.name + " "), std::string::npos) << "missing from --help";
  }
  EXPECT_GE(names.size(), 40u);
}

// For every row: its example on the command line comes back unchanged
// through config_to_json and through --dump-config -> --config; it changes
// the launch hash, and the trajectory hash exactly when its class is Exact.
TEST(OptionTable, EveryExampleRoundTripsAndMovesTheRightHashes) {
  const Config defaults;
  for (const auto& spec : option_table()) {
    SCOPED_TRACE(spec.name + " = " + spec.example);
    const ParsedOptions parsed = parse_options({"--" + spec.name, spec.example});
    const Config& config = parsed.config;
    EXPECT_EQ(spec.text(config), spec.example);
    const nlohmann::json json = config_to_json(config);
    ASSERT_TRUE(json.contains(spec.name));
    EXPECT_EQ(json[spec.name], spec.json(config));
    EXPECT_NE(json[spec.name], config_to_json(defaults)[spec.name]);
    const std::string json_text = json[spec.name].is_string() ? json[spec.name].get<std::string>()
                                                               : json[spec.name].dump();
    EXPECT_EQ(spec.text(parse_options({"--" + spec.name, json_text}).config), spec.example)
        << "config.json's value reads back as the example";
    EXPECT_EQ(parsed.sources.at(spec.name), "the command line");

    const TempFile dumped(dump_config(parsed));
    const ParsedOptions again = parse_options({"--config", dumped.path()});
    EXPECT_EQ(config_to_json(again.config), json);
    EXPECT_EQ(launch_hash(again.config), launch_hash(config));

    EXPECT_NE(launch_hash(config), launch_hash(defaults));
    if (spec.effect == Effect::Exact) {
      EXPECT_NE(trajectory_hash(config), trajectory_hash(defaults));
    } else {
      EXPECT_EQ(trajectory_hash(config), trajectory_hash(defaults));
    }
  }
}

TEST(Options, DumpConfigSaysWhereEachValueCameFrom) {
  const TempFile ini("# a comment\nepochs = 3\n\nmicro-batch-size = 32\nthreads = auto\n");
  const ParsedOptions parsed = parse_options({"--config", ini.path(), "--lr", "0.5", "--dump-config"});
  EXPECT_TRUE(parsed.dump_requested);
  const std::string dump = dump_config(parsed);
  EXPECT_NE(dump.find("# from the command line\nlr = 0.5\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("# from " + ini.path() + ":2\nepochs = 3\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("# from " + ini.path() + ":4\nmicro-batch-size = 32\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("# default\nmomentum = 0.9\n"), std::string::npos) << dump;
  // Derived and unset values are commented out; auto stays auto.
  EXPECT_NE(dump.find("# global-batch-size =\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("# init-from =\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("threads = auto\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("overlap = auto\n"), std::string::npos) << dump;
  // Grouped as in --help, each group once, in order.
  size_t position = 0;
  for (const auto& group : option_groups()) {
    const size_t found = dump.find("## " + group.heading + "\n");
    ASSERT_NE(found, std::string::npos) << group.heading;
    EXPECT_GT(found, position);
    position = found;
  }
  // Every option appears, set or commented out.
  for (const auto& spec : option_table()) {
    EXPECT_TRUE(dump.find("\n" + spec.name + " = ") != std::string::npos ||
                dump.find("\n# " + spec.name + " =") != std::string::npos)
        << spec.name;
  }
}

TEST(Options, AnEmptyValueThatIsNotTheDefaultSurvivesTheDump) {
  const ParsedOptions parsed = parse_options({"--model", "cnn", "--hidden", ""});
  EXPECT_TRUE(parsed.config.model.hidden.empty());
  const TempFile dumped(dump_config(parsed));
  const Config again = parse({"--config", dumped.path()});
  EXPECT_EQ(config_to_json(again), config_to_json(parsed.config));
  EXPECT_EQ(trajectory_hash(again), trajectory_hash(parsed.config));
}

TEST(Options, TrajectoryHashIgnoresHowTheBatchIsSplit) {
  // Resolved batch groups (as main() hashes them): same global batch, other split.
  Config a = parse({"--micro-batch-size", "64", "--grad-accum-steps", "2", "--global-batch-size", "256"});
  Config b = parse({"--micro-batch-size", "32", "--grad-accum-steps", "8", "--global-batch-size", "256"});
  EXPECT_EQ(trajectory_hash(a), trajectory_hash(b));
  EXPECT_NE(launch_hash(a), launch_hash(b));
  b.batch.global_batch_size = 512;
  EXPECT_NE(trajectory_hash(a), trajectory_hash(b));
}

// docs/configuration.md embeds the generated tables; regenerate them with
// DTRAIN_UPDATE_DOCS=1 build/dtrain_unit_tests --gtest_filter=OptionTable.*
TEST(OptionTable, DocsTablesMatchTheTable) {
  const std::string path = std::string(DTRAIN_SOURCE_DIR) + "/docs/configuration.md";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  std::stringstream content;
  content << in.rdbuf();
  std::string doc = content.str();
  const std::string begin = "<!-- options:begin (generated from src/cli/option_table.cpp) -->\n";
  const std::string end = "<!-- options:end -->";
  const size_t from = doc.find(begin), to = doc.find(end);
  ASSERT_NE(from, std::string::npos) << "marker missing in " << path;
  ASSERT_NE(to, std::string::npos) << "marker missing in " << path;
  const std::string expected = options_markdown();
  if (std::getenv("DTRAIN_UPDATE_DOCS")) {
    doc.replace(from + begin.size(), to - from - begin.size(), expected);
    std::ofstream(path) << doc;
    return;
  }
  EXPECT_EQ(doc.substr(from + begin.size(), to - from - begin.size()), expected)
      << "docs/configuration.md is out of date: run DTRAIN_UPDATE_DOCS=1 build/dtrain_unit_tests "
         "--gtest_filter=OptionTable.DocsTablesMatchTheTable";
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
  EXPECT_EQ(launch_hash(again), launch_hash(original));
}

}  // namespace
}  // namespace dtrain
