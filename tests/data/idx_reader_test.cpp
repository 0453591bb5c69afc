#include "data/idx_reader.h"

#include "common/error.h"
#include "data/dataset.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

namespace dtrain {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> idx_bytes(std::vector<uint8_t> magic, std::vector<uint32_t> dims, size_t data_bytes) {
  std::vector<uint8_t> bytes = magic;
  for (uint32_t d : dims) {
    for (int shift : {24, 16, 8, 0}) bytes.push_back(static_cast<uint8_t>(d >> shift));
  }
  for (size_t i = 0; i < data_bytes; ++i) bytes.push_back(static_cast<uint8_t>(i % 10));
  return bytes;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(file);
}

class IdxReader : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dtrain_idx_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  void expect_error(const std::string& file, int rank, const std::string& must_mention) {
    try {
      read_idx_file(file, rank);
      ADD_FAILURE() << "no error reading " << file;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(must_mention), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    }
  }
  fs::path dir_;
};

TEST_F(IdxReader, ReadsImagesAndLabels) {
  write_gz(path("images.gz"), idx_bytes({0, 0, 8, 3}, {3, 2, 4}, 24));
  const IdxArray images = read_idx_file(path("images.gz"), 3);
  EXPECT_EQ(images.dims, (std::vector<int64_t>{3, 2, 4}));
  ASSERT_EQ(images.data.size(), 24u);
  EXPECT_EQ(images.data[13], 3);
  write_gz(path("labels.gz"), idx_bytes({0, 0, 8, 1}, {5}, 5));
  EXPECT_EQ(read_idx_file(path("labels.gz"), 1).data, (std::vector<uint8_t>{0, 1, 2, 3, 4}));
}

TEST_F(IdxReader, RejectsBadFiles) {
  write_gz(path("truncated.gz"), idx_bytes({0, 0, 8, 3}, {3, 2, 4}, 20));
  expect_error(path("truncated.gz"), 3, "truncated");
  write_gz(path("short_header.gz"), {0, 0, 8, 3, 0, 0});
  expect_error(path("short_header.gz"), 3, "truncated");
  write_gz(path("magic.gz"), idx_bytes({0, 0, 9, 3}, {3, 2, 4}, 24));  // int32 type
  expect_error(path("magic.gz"), 3, "magic 0x00000903, expected 0x00000803");
  write_gz(path("rank.gz"), idx_bytes({0, 0, 8, 1}, {5}, 5));
  expect_error(path("rank.gz"), 3, "expected 0x00000803");
  write_gz(path("long.gz"), idx_bytes({0, 0, 8, 1}, {5}, 6));
  expect_error(path("long.gz"), 1, "past the size");
  expect_error(path("missing.gz"), 1, "apt-get install dataset-fashion-mnist");
}

// Headers that claim far more than the file holds: one line naming the file
// and the mismatch, and nothing of the claimed size is allocated.
TEST_F(IdxReader, HugeClaimsAreCheckedAgainstTheDataBeforeAllocating) {
  struct Case {
    std::vector<uint32_t> dims;
    const char* must_mention;
  };
  const Case cases[] = {
      {{2147483647u, 28, 28}, "header claims 2147483647 images of 28x28 (1.7 TB), but the file holds 1000 bytes of data"},
      {{60000, 65536, 65536}, "header claims 60000 images of 65536x65536 (257.7 TB), but the file holds 1000 bytes"},
      {{4294967295u, 4294967295u, 4294967295u}, "more than the"},
  };
  for (const auto& c : cases) {
    for (bool gzip : {true, false}) {
      const auto bytes = idx_bytes({0, 0, 8, 3}, c.dims, 1000);
      const std::string file = path(gzip ? "huge.gz" : "huge.idx");
      if (gzip) {
        write_gz(file, bytes);
      } else {
        std::ofstream(file, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
      }
      expect_error(file, 3, c.must_mention);
      expect_error(file, 3, file);
    }
  }
  // In memory, as the fuzz harness calls it: gzip that inflates past the claim.
  const auto long_data = idx_bytes({0, 0, 8, 1}, {4}, 1 << 21);
  try {
    parse_idx(long_data.data(), long_data.size(), "labels", 1);
    ADD_FAILURE() << "accepted data past the claim";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("labels has bytes past the size its header declares"), std::string::npos) << e.what();
  }
}

TEST_F(IdxReader, FashionMnistChecksThatImagesAndLabelsBelongTogether) {
  write_gz(path("train-images-idx3-ubyte.gz"), idx_bytes({0, 0, 8, 3}, {4, 28, 28}, 4 * 784));
  write_gz(path("train-labels-idx1-ubyte.gz"), idx_bytes({0, 0, 8, 1}, {3}, 3));
  try {
    load_fashion_mnist(dir_.string());
    ADD_FAILURE() << "mismatched counts accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 images but"), std::string::npos) << e.what();
  }
  write_gz(path("train-labels-idx1-ubyte.gz"), idx_bytes({0, 0, 8, 1}, {4}, 4));
  write_gz(path("t10k-images-idx3-ubyte.gz"), idx_bytes({0, 0, 8, 3}, {2, 28, 28}, 2 * 784));
  write_gz(path("t10k-labels-idx1-ubyte.gz"), idx_bytes({0, 0, 8, 1}, {2}, 2));
  const Dataset data = load_fashion_mnist(dir_.string());
  EXPECT_EQ(data.train.inputs.sizes(), (std::vector<int64_t>{4, 1, 28, 28}));
  EXPECT_EQ(data.test.size(), 2);
  // Pixel 0 of sample 0 is 0: normalized to (0 - 0.2860) / 0.3530.
  EXPECT_NEAR(data.train.inputs[0][0][0][0].item<float>(), -0.2860 / 0.3530, 1e-6);
  EXPECT_EQ(data.train.targets[1].item<int64_t>(), 1);
}

}  // namespace
}  // namespace dtrain
