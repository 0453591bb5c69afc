// The checkpoint folder format and its guarantees (docs/checkpoints.md).
#include "run/checkpoint.h"
#include "run/checkpoint_files.h"

#include "cli/option_table.h"
#include "cli/options.h"
#include "common/error.h"
#include "io/files.h"
#include "run/nonfinite.h"
#include "optim/optimizer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace dtrain {
namespace {

namespace fs = std::filesystem;

class Checkpoints : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("dtrain_ckpt_" + std::to_string(::getpid()))).string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  static Checkpoint sample(int64_t step) {
    Checkpoint checkpoint;
    checkpoint.model = {{"w", torch::full({4}, static_cast<float>(step))}};
    checkpoint.optimizer = {{"w.momentum_buffer", torch::ones({4})}};
    checkpoint.trainer = {{"step", step}, {"options", nlohmann::json::object()}, {"world_size", 1}};
    return checkpoint;
  }
  std::string dir_;
};

TEST_F(Checkpoints, WrittenFilesVerifyAndReadBack) {
  const auto written = write_checkpoint(dir_, 7, sample(7), 2);
  EXPECT_EQ(written.path, dir_ + "/step-00000007");
  for (const char* file : {"model.pt", "optimizer.pt", "trainer.json", "manifest.json"}) {
    EXPECT_TRUE(fs::exists(written.path + "/" + file)) << file;
  }
  const auto manifest = nlohmann::json::parse(read_file(written.path + "/manifest.json"));
  const std::string model = read_file(written.path + "/model.pt");
  EXPECT_EQ(manifest["hash"], "xxh3-128");
  EXPECT_EQ(manifest["files"]["model.pt"]["xxh3-128"], xxh3_128_hex(model));
  EXPECT_EQ(manifest["files"]["model.pt"]["bytes"], model.size());
  const Checkpoint back = read_checkpoint(written.path);
  ASSERT_EQ(back.model.size(), 1u);
  EXPECT_TRUE(torch::equal(back.model[0].second, torch::full({4}, 7.0f)));
  EXPECT_EQ(back.trainer["step"], 7);
  EXPECT_FALSE(fs::exists(written.path + ".tmp"));
}

TEST_F(Checkpoints, OnlyTheNewestKAreKeptAndTmpFoldersAreNeverListed) {
  for (int64_t step : {10, 20, 30, 40}) write_checkpoint(dir_, step, sample(step), 2);
  fs::create_directories(dir_ + "/step-00000050.tmp");
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{dir_ + "/step-00000040", dir_ + "/step-00000030"}));
  EXPECT_EQ(remove_unfinished_checkpoints(dir_), 1);
  EXPECT_FALSE(fs::exists(dir_ + "/step-00000050.tmp"));
}

TEST_F(Checkpoints, TheFolderHoldsOneHistoryAndNeverLosesTheNewestWrite) {
  // A run resumed from step 10 (or one that skipped damaged newer ones)
  // writes step 15: the newer checkpoints of the abandoned history go, the
  // new one stays even with --keep-checkpoints 1.
  for (int64_t step : {10, 20, 30}) write_checkpoint(dir_, step, sample(step), 3);
  write_checkpoint(dir_, 15, sample(15), 1);
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{dir_ + "/step-00000015"}));
  // A checkpoint moved aside to be replaced, whose replacement never came, is
  // put back rather than deleted.
  fs::rename(dir_ + "/step-00000015", dir_ + "/step-00000015.replaced.tmp");
  EXPECT_EQ(remove_unfinished_checkpoints(dir_), 0);
  EXPECT_NO_THROW(read_checkpoint(dir_ + "/step-00000015"));
  // Steps past 10^8 are listed too.
  write_checkpoint(dir_, 123456789, sample(123456789), 5);
  EXPECT_EQ(list_checkpoints(dir_).front(), dir_ + "/step-123456789");
}

TEST_F(Checkpoints, DamageIsFoundAndAutoFallsBackToAnOlderOne) {
  write_checkpoint(dir_, 10, sample(10), 3);
  write_checkpoint(dir_, 20, sample(20), 3);
  {
    std::fstream file(dir_ + "/step-00000020/model.pt", std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(100);
    file.put('\x55');  // one flipped byte, size unchanged
  }
  try {
    read_checkpoint(dir_ + "/step-00000020");
    ADD_FAILURE() << "a bit flip passed the manifest";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.pt fails its XXH3-128 check"), std::string::npos) << e.what();
  }
  std::vector<std::string> warnings;
  const auto found = newest_valid_checkpoint(dir_, [&](const std::string& w) { warnings.push_back(w); });
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->path, dir_ + "/step-00000010");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("step-00000020 is damaged: model.pt"), std::string::npos) << warnings[0];
}

// Checkpoints written before XXH3-128 name no hash and carry SHA-256: they
// stay readable, and their check still catches damage. A hash this dtrain
// does not know is refused by name.
TEST_F(Checkpoints, ManifestsOfSha256StayReadableAndUnknownHashesAreRefused) {
  const std::string path = write_checkpoint(dir_, 10, sample(10), 3).path;
  const std::string manifest_path = path + "/manifest.json";
  auto manifest = nlohmann::json::parse(read_file(manifest_path));
  manifest.erase("hash");
  for (auto& [name, entry] : manifest["files"].items()) {
    entry = {{"bytes", entry["bytes"]}, {"sha256", sha256_hex(read_file(path + "/" + name))}};
  }
  const std::string old_text = manifest.dump(1);
  write_file_synced(manifest_path, old_text.data(), old_text.size());
  EXPECT_TRUE(torch::equal(read_checkpoint(path).model[0].second, torch::full({4}, 10.0f)));
  {
    std::fstream file(path + "/optimizer.pt", std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(100);
    file.put('\x55');
  }
  try {
    read_checkpoint(path);
    ADD_FAILURE() << "a bit flip passed a SHA-256 manifest";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.pt fails its SHA-256 check"), std::string::npos) << e.what();
  }
  manifest["hash"] = "md5";
  const std::string unknown = manifest.dump(1);
  write_file_synced(manifest_path, unknown.data(), unknown.size());
  try {
    read_checkpoint(path);
    ADD_FAILURE() << "an unknown hash was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("names the hash \"md5\", this dtrain knows xxh3-128 and sha256"),
              std::string::npos)
        << e.what();
  }
}

// XXH3-128 as xxHash's reference gives it (the empty input's hash, from
// xxhash's own sanity table), one-shot and streamed alike.
TEST(FileHashes, Xxh3MatchesTheReferenceAndStreamsLikeOneShot) {
  EXPECT_EQ(xxh3_128_hex("", 0), "99aa06d3014798d86001c324468d497f");
  std::string bytes(1 << 20, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
  Xxh3 streamed;
  for (size_t at = 0; at < bytes.size(); at += 4093) streamed.update(bytes.data() + at, std::min<size_t>(4093, bytes.size() - at));
  EXPECT_EQ(streamed.hex(), xxh3_128_hex(bytes));
  bytes[12345] ^= 1;
  EXPECT_NE(streamed.hex(), xxh3_128_hex(bytes));
  EXPECT_EQ(crc32_of("123456789", 9), 0xcbf43926u);  // CRC-32's check value
}

TEST_F(Checkpoints, ResumeRefusesTrajectoryChangesAndAllowsTheRest) {
  Config saved = parse_options({"--global-batch-size", "64", "--schedule", "cosine"}).config;
  // The option texts, as the trainer writes them into trainer.json.
  nlohmann::json state = {{"options", nlohmann::json::object()}};
  for (const auto& spec : option_table()) state["options"][spec.name] = spec.text(saved);
  Config now = saved;
  now.run.log_every = 7;
  now.run.threads = 3;
  now.batch.micro_batch_size = 16;
  now.checkpoint.keep = 9;
  EXPECT_NO_THROW(check_resume_compatible(state, now, "ck"));
  now.lr.lr = 0.3;
  now.run.epochs = 5;
  try {
    check_resume_compatible(state, now, "ck");
    ADD_FAILURE() << "an LR change was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--lr 0.1 -> 0.3, --epochs 1 -> 5"), std::string::npos) << e.what();
  }
  // A checkpoint older than an option had that option's default: a resume
  // that sets it otherwise changes the trajectory.
  state["options"].erase("validation-size");
  Config newer = saved;
  EXPECT_NO_THROW(check_resume_compatible(state, newer, "ck"));
  newer.data.validation_size = 5000;
  EXPECT_THROW(check_resume_compatible(state, newer, "ck"), UsageError);
  // Hostile or many changes still make one short printable line.
  for (auto& [name, value] : state["options"].items()) value = std::string(300, '\x01') + name;
  try {
    check_resume_compatible(state, saved, "ck");
    ADD_FAILURE() << "every option changed, and it was accepted";
  } catch (const UsageError& e) {
    const std::string message = e.what();
    EXPECT_LT(message.size(), 500u) << message;
    EXPECT_EQ(message.find('\x01'), std::string::npos) << message;
    EXPECT_NE(message.find(" more; resume with"), std::string::npos) << message;
  }
}

// The in-memory reader (the fuzz harness's entry point) refuses a
// trainer.json whose options are not an object, and reads what verifies.
TEST_F(Checkpoints, InMemoryFilesVerifyAndOptionsMustBeAnObject) {
  const std::string path = write_checkpoint(dir_, 5, sample(5), 2).path;
  CheckpointFiles files;
  for (const char* name : {"manifest.json", "model.pt", "optimizer.pt", "trainer.json"}) {
    files[name] = read_file(path + "/" + name);
  }
  EXPECT_TRUE(torch::equal(parse_checkpoint(files, "mem").model[0].second, torch::full({4}, 5.0f)));
  files["trainer.json"] = "{\"step\": 5, \"options\": 5, \"world_size\": 1}";
  auto manifest = nlohmann::json::parse(files["manifest.json"]);
  manifest["files"]["trainer.json"] = {{"bytes", files["trainer.json"].size()},
                                       {"xxh3-128", xxh3_128_hex(files["trainer.json"])}};
  files["manifest.json"] = manifest.dump();
  try {
    parse_checkpoint(files, "mem");
    ADD_FAILURE() << "options 5 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("trainer.json has \"options\" that are not an object"), std::string::npos)
        << e.what();
  }
  files.erase("model.pt");
  EXPECT_THROW(parse_checkpoint(files, "mem"), Error);
}

// Every optimizer's state goes out as named tensors and back in, and the
// optimizer continues bit for bit (what a resume relies on).
TEST(OptimizerState, EveryOptimizerContinuesBitForBitFromItsNamedState) {
  for (const OptimizerKind kind : {OptimizerKind::Sgd, OptimizerKind::AdamW, OptimizerKind::Lars, OptimizerKind::Lamb}) {
    SCOPED_TRACE(to_string(kind));
    OptimizerOptions options;
    options.kind = kind;
    options.weight_decay = 0.01;
    options.eps = default_eps(kind);
    torch::manual_seed(5);
    const NamedParameters initial = {{"layer.weight", torch::randn({3, 4})}, {"layer.bias", torch::randn({3})}};
    auto copy = [](const NamedParameters& from) {
      NamedParameters to;
      for (const auto& [name, t] : from) to.emplace_back(name, t.detach().clone().requires_grad_(true));
      return to;
    };
    const NamedParameters a = copy(initial);
    auto optimizer_a = make_optimizer(options, a, 0.1);
    auto step = [](const NamedParameters& parameters, torch::optim::Optimizer& optimizer, int t) {
      for (size_t i = 0; i < parameters.size(); ++i) {
        parameters[i].second.mutable_grad() = torch::sin(torch::arange(parameters[i].second.numel()).to(torch::kFloat) *
                                                         (t + 1) + static_cast<float>(i)).view_as(parameters[i].second);
      }
      optimizer.step();
    };
    for (int t = 0; t < 3; ++t) step(a, *optimizer_a, t);
    // A fresh optimizer over copies of the weights, given the state.
    const NamedParameters b = copy(a);
    auto optimizer_b = make_optimizer(options, b, 0.1);
    load_optimizer_state(*optimizer_b, options, b, optimizer_state(*optimizer_a, options, a), "test");
    for (int t = 3; t < 5; ++t) {
      step(a, *optimizer_a, t);
      step(b, *optimizer_b, t);
    }
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i].second.equal(b[i].second)) << a[i].first;
    // And the state mattered: a fresh optimizer without it ends elsewhere.
    const NamedParameters c = copy(initial);
    auto optimizer_c = make_optimizer(options, c, 0.1);
    for (int t = 0; t < 3; ++t) step(c, *optimizer_c, t);
    auto optimizer_d = make_optimizer(options, c, 0.1);
    for (int t = 3; t < 5; ++t) step(c, *optimizer_d, t);
    EXPECT_FALSE(a[0].second.equal(c[0].second));
  }
}

TEST(NonFinite, StopDivergesAtOnceSkipAfterTenInARow) {
  NonFiniteGuard stop(NonFinitePolicy::Stop);
  EXPECT_EQ(stop.judge(true), StepVerdict::Update);
  EXPECT_EQ(stop.judge(false), StepVerdict::Diverge);
  NonFiniteGuard skip(NonFinitePolicy::Skip);
  for (int i = 0; i < 9; ++i) EXPECT_EQ(skip.judge(false), StepVerdict::Skip);
  EXPECT_EQ(skip.judge(true), StepVerdict::Update);  // the streak resets
  for (int i = 0; i < 9; ++i) EXPECT_EQ(skip.judge(false), StepVerdict::Skip);
  EXPECT_EQ(skip.judge(false), StepVerdict::Diverge);
  EXPECT_EQ(skip.skipped_total(), 19);
}

}  // namespace
}  // namespace dtrain
