// Every seed-corpus file and every kept fuzz finding
// (tests/fuzz/regressions/HARNESS/), replayed through its harness in the
// ordinary builds too (Debian's and the PyPI LibTorch, and the sanitized
// build): each must give a result or one clean error, as when it was fixed.
#include "harnesses.h"

#include "io/weights.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

namespace dtrain {
namespace {

namespace fs = std::filesystem;

TEST(FuzzRegressions, EveryKeptInputGivesAResultOrOneCleanError) {
  const fs::path root = fs::path(DTRAIN_SOURCE_DIR) / "tests" / "fuzz";
  const std::vector<std::pair<std::string, void (*)(const uint8_t*, size_t)>> harnesses = {
      {"idx", fuzz::idx}, {"config", fuzz::config}, {"option_values", fuzz::option_values}, {"weights", fuzz::weights},
      {"checkpoint", fuzz::checkpoint}};
  int replayed = 0;
  for (const auto& [name, harness] : harnesses) {
    for (const char* kind : {"corpus", "regressions"}) {
      const fs::path dir = root / kind / name;
      if (!fs::is_directory(dir)) continue;
      for (const auto& entry : fs::directory_iterator(dir)) {
        if (!entry.is_regular_file() || entry.path().filename().string().front() == '.') continue;
        SCOPED_TRACE(entry.path().string());
        std::ifstream file(entry.path(), std::ios::binary);
        const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
        harness(bytes.data(), bytes.size());  // aborts on a finding
        ++replayed;
      }
    }
  }
  EXPECT_GE(replayed, 50) << "the seed corpus and regressions should be there";
}

// The seed weight files are real torch.save and dtrain --export files: the
// checks in front of LibTorch must let them through.
TEST(FuzzRegressions, TheRealWeightFilesOfTheCorpusLoad) {
  const fs::path dir = fs::path(DTRAIN_SOURCE_DIR) / "tests" / "fuzz" / "corpus" / "weights";
  int loaded = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    SCOPED_TRACE(entry.path().string());
    EXPECT_FALSE(read_weights(entry.path().string()).empty());
    ++loaded;
  }
  EXPECT_GE(loaded, 3);
}

}  // namespace
}  // namespace dtrain
