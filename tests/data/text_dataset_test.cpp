// Byte-level text data (data/text_dataset.h): rows, pieces, padding, the
// validation split of whole documents, packing, the bigram baseline, reading
// documents, and the KJV from Debian's bible-kjv.
#include "data/text_dataset.h"

#include "common/error.h"
#include "data/sampler.h"
#include "skip.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <set>

namespace dtrain {
namespace {

namespace fs = std::filesystem;

std::vector<int64_t> row_of(const at::Tensor& t, int64_t row) {
  const auto r = t[row].contiguous();
  return std::vector<int64_t>(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel());
}

std::vector<int64_t> bytes_then(const std::string& text, int64_t fill, size_t width) {
  std::vector<int64_t> out;
  for (unsigned char c : text) out.push_back(c);
  out.resize(width, fill);
  return out;
}

// The bytes a row holds: its inputs, then its last target.
std::string row_text(const TokenSplit& split, int64_t row) {
  const auto inputs = row_of(split.inputs, row), targets = row_of(split.targets, row);
  const int64_t count = split.target_counts[row].item<int64_t>();
  std::string text;
  for (int64_t t = 0; t < count; ++t) text.push_back(static_cast<char>(inputs[t]));
  text.push_back(static_cast<char>(targets[count - 1]));
  return text;
}

// The structural invariants of every split: shapes, -1 exactly at the
// padding, 0 inputs there, counts that agree, each target the byte after its
// input within the row.
void expect_well_formed(const TokenSplit& split, int64_t block_size) {
  const int64_t rows = split.size();
  ASSERT_EQ(split.inputs.sizes().vec(), (std::vector<int64_t>{rows, block_size}));
  ASSERT_EQ(split.targets.sizes().vec(), (std::vector<int64_t>{rows, block_size}));
  ASSERT_EQ(split.target_counts.sizes().vec(), (std::vector<int64_t>{rows}));
  EXPECT_EQ(split.inputs.scalar_type(), torch::kLong);
  EXPECT_EQ(split.targets.scalar_type(), torch::kLong);
  EXPECT_EQ(split.target_counts.scalar_type(), torch::kLong);
  if (rows == 0) return;
  EXPECT_TRUE(torch::equal(split.targets.ne(-1).sum(1), split.target_counts));
  EXPECT_GE(split.target_counts.min().item<int64_t>(), 1);
  const auto position = torch::arange(block_size, torch::kLong).unsqueeze(0);
  const auto padding = position.ge(split.target_counts.unsqueeze(1));
  EXPECT_TRUE(torch::equal(split.targets.eq(-1), padding)) << "padding only at the end";
  EXPECT_EQ(split.inputs.masked_select(padding).abs().sum().item<int64_t>(), 0) << "padded inputs are 0";
  EXPECT_TRUE(split.inputs.ge(0).all().item<bool>() && split.inputs.lt(256).all().item<bool>());
  // Within a row, input t+1 is target t.
  const auto inner = padding.narrow(1, 1, block_size - 1).logical_not();
  EXPECT_TRUE(torch::equal(split.inputs.narrow(1, 1, block_size - 1).masked_select(inner),
                           split.targets.narrow(1, 0, block_size - 1).masked_select(inner)));
}

TEST(TextDataset, AShortDocumentGivesOneExactRow) {
  const TextDataset data = make_text_dataset({"abc"}, 4, 0, 1, false);
  ASSERT_EQ(data.train.size(), 1);
  EXPECT_EQ(row_of(data.train.inputs, 0), bytes_then("ab", 0, 4));
  EXPECT_EQ(row_of(data.train.targets, 0), bytes_then("bc", -1, 4));
  EXPECT_EQ(data.train.target_counts[0].item<int64_t>(), 2);
  EXPECT_EQ(data.block_size, 4);
  EXPECT_EQ(data.train_documents, 1);
  EXPECT_EQ(data.validation_documents, 0);
  EXPECT_EQ(data.validation.size(), 0);
  expect_well_formed(data.validation, 4);
}

TEST(TextDataset, ADocumentOfBlockSizePlusOneBytesFillsARow) {
  const TokenSplit split = make_token_split({"hello"}, 4, false);
  ASSERT_EQ(split.size(), 1);
  EXPECT_EQ(row_of(split.inputs, 0), bytes_then("hell", 0, 4));
  EXPECT_EQ(row_of(split.targets, 0), bytes_then("ello", -1, 4));
  EXPECT_EQ(split.target_counts[0].item<int64_t>(), 4);
}

TEST(TextDataset, ALongDocumentIsCutIntoPiecesSharingOneByte) {
  const TokenSplit split = make_token_split({"abcdefghijk"}, 4, false);  // 11 bytes, 10 targets
  ASSERT_EQ(split.size(), 3);
  EXPECT_EQ(row_text(split, 0), "abcde");
  EXPECT_EQ(row_text(split, 1), "efghi");
  EXPECT_EQ(row_text(split, 2), "ijk");
  EXPECT_EQ(row_of(split.targets, 2), bytes_then("jk", -1, 4));
  EXPECT_EQ(split.target_counts.sum().item<int64_t>(), 10);
}

// For every document length and block size: each (position, next byte) pair of
// the document appears in exactly one row, and nothing else does.
TEST(TextDataset, EveryNextBytePredictionOfADocumentIsMadeExactlyOnce) {
  std::string alphabet;
  for (int i = 0; i < 40; ++i) alphabet.push_back(static_cast<char>('!' + i));  // distinct bytes
  for (int64_t block_size : {1, 2, 3, 5, 8}) {
    for (size_t length = 1; length <= alphabet.size(); ++length) {
      const std::string document = alphabet.substr(0, length);
      const TokenSplit split = make_token_split({document}, block_size, false);
      expect_well_formed(split, block_size);
      std::multiset<std::pair<int64_t, int64_t>> pairs;  // (input byte, target byte): one per position
      for (int64_t row = 0; row < split.size(); ++row) {
        const auto inputs = row_of(split.inputs, row), targets = row_of(split.targets, row);
        for (int64_t t = 0; t < block_size; ++t) {
          if (targets[t] != -1) pairs.emplace(inputs[t], targets[t]);
        }
        EXPECT_EQ(inputs[0], static_cast<unsigned char>(document[row * block_size])) << "row " << row << " starts at " << row * block_size;
      }
      std::multiset<std::pair<int64_t, int64_t>> expected;
      for (size_t i = 0; i + 1 < length; ++i) {
        expected.emplace(static_cast<unsigned char>(document[i]), static_cast<unsigned char>(document[i + 1]));
      }
      EXPECT_EQ(pairs, expected) << "length " << length << ", block size " << block_size;
      EXPECT_EQ(split.size(), length < 2 ? 0 : static_cast<int64_t>((length - 2) / block_size + 1));
    }
  }
}

TEST(TextDataset, OneByteDocumentsHaveNoTargetAndAreDropped) {
  const TokenSplit split = make_token_split({"a", "bc", "d", "efg"}, 4, false);
  ASSERT_EQ(split.size(), 2);
  EXPECT_EQ(row_text(split, 0), "bc");
  EXPECT_EQ(row_text(split, 1), "efg");
  EXPECT_EQ(split.target_counts[0].item<int64_t>(), 1);
  EXPECT_THROW(make_text_dataset({"a", "b"}, 4, 0, 1, false), UsageError);
}

std::vector<std::string> numbered_documents(int count) {
  std::vector<std::string> documents;
  for (int i = 0; i < count; ++i) {
    // Lengths 3 to 40 bytes: some fit a row of 8, most are cut into pieces.
    std::string document = "<";  // built in steps: "<" + to_string(i) trips GCC 12's -Wstringop-overflow
    document += std::to_string(i);
    document += '>';
    while (document.size() < static_cast<size_t>(3 + (i * 7) % 38)) document.push_back(static_cast<char>('a' + i % 26));
    documents.push_back(document);
  }
  return documents;
}

TEST(TextDataset, TheValidationSplitIsWholeDocumentsChosenByTheSeed) {
  const auto documents = numbered_documents(30);
  const TextDataset data = make_text_dataset(documents, 8, 6, /*seed=*/3, false);
  EXPECT_EQ(data.train_documents, 24);
  EXPECT_EQ(data.validation_documents, 6);
  expect_well_formed(data.train, 8);
  expect_well_formed(data.validation, 8);
  const std::vector<int64_t> held_out = validation_indices(30, 6, 3);
  std::vector<std::string> expected_validation, expected_train;
  for (int64_t i = 0; i < 30; ++i) {
    (std::count(held_out.begin(), held_out.end(), i) ? expected_validation : expected_train).push_back(documents[i]);
  }
  const TokenSplit validation = make_token_split(expected_validation, 8, false);
  const TokenSplit train = make_token_split(expected_train, 8, false);
  EXPECT_TRUE(torch::equal(data.validation.inputs, validation.inputs));
  EXPECT_TRUE(torch::equal(data.validation.targets, validation.targets));
  EXPECT_TRUE(torch::equal(data.train.inputs, train.inputs));
  EXPECT_TRUE(torch::equal(data.train.targets, train.targets));
  EXPECT_TRUE(torch::equal(data.train.target_counts, train.target_counts));

  // Independently: the validation rows, joined piece by piece (a piece
  // continues a document when it starts with the previous piece's last byte
  // and the previous piece was full), spell exactly the held-out documents.
  std::vector<std::string> joined;
  for (int64_t row = 0; row < data.validation.size(); ++row) {
    const std::string text = row_text(data.validation, row);
    const bool continues = !joined.empty() && text[0] != '<';
    if (continues) joined.back() += text.substr(1);
    else joined.push_back(text);
  }
  EXPECT_EQ(joined, expected_validation);
  int64_t targets = 0;
  for (const auto& document : documents) targets += static_cast<int64_t>(document.size()) - 1;
  EXPECT_EQ(data.validation.target_counts.sum().item<int64_t>() + data.train.target_counts.sum().item<int64_t>(),
            targets);
}

TEST(TextDataset, TheSameSeedGivesTheSameSplitAndAnotherSeedAnother) {
  const auto documents = numbered_documents(30);
  const TextDataset a = make_text_dataset(documents, 8, 6, 3, false);
  const TextDataset b = make_text_dataset(documents, 8, 6, 3, false);
  const TextDataset c = make_text_dataset(documents, 8, 6, 4, false);
  ASSERT_NE(validation_indices(30, 6, 3), validation_indices(30, 6, 4));
  EXPECT_TRUE(torch::equal(a.validation.inputs, b.validation.inputs));
  EXPECT_TRUE(torch::equal(a.train.targets, b.train.targets));
  EXPECT_FALSE(a.validation.inputs.sizes() == c.validation.inputs.sizes() &&
               torch::equal(a.validation.inputs, c.validation.inputs));
}

TEST(TextDataset, PackingMakesFullRowsOfTheNewlineSeparatedStream) {
  const TokenSplit split = make_token_split({"ab", "cde", "f"}, 3, true);  // "ab\ncde\nf\n": 9 bytes
  ASSERT_EQ(split.size(), 2);
  EXPECT_EQ(row_text(split, 0), "ab\nc");
  EXPECT_EQ(row_text(split, 1), "cde\n");  // the last partial row "\nf\n" is dropped
  EXPECT_TRUE(torch::equal(split.target_counts, torch::full({2}, 3, torch::kLong)));

  const auto documents = numbered_documents(30);
  const TextDataset data = make_text_dataset(documents, 8, 6, 3, true);
  expect_well_formed(data.train, 8);
  EXPECT_FALSE(data.train.targets.eq(-1).any().item<bool>()) << "a packed row is never padded";
  EXPECT_TRUE(torch::equal(data.train.target_counts, torch::full({data.train.size()}, 8, torch::kLong)));
  // The validation split stays whole documents, one per row, as unpacked:
  // packing changes what is trained on, not what is scored.
  const TextDataset unpacked = make_text_dataset(documents, 8, 6, 3, false);
  EXPECT_TRUE(torch::equal(data.validation.inputs, unpacked.validation.inputs));
  EXPECT_TRUE(torch::equal(data.validation.targets, unpacked.validation.targets));
  EXPECT_TRUE(data.validation.targets.eq(-1).any().item<bool>()) << "short documents are padded";
  // The rows chain into the stream of the training documents, each ended by '\n'.
  std::string stream, rebuilt;
  const std::vector<int64_t> held_out = validation_indices(30, 6, 3);
  for (int64_t i = 0; i < 30; ++i) {
    if (!std::count(held_out.begin(), held_out.end(), i)) stream += documents[i] + "\n";
  }
  for (int64_t row = 0; row < data.train.size(); ++row) {
    const std::string text = row_text(data.train, row);
    rebuilt += row == 0 ? text : text.substr(1);
    if (row > 0) {
      EXPECT_EQ(text[0], row_text(data.train, row - 1).back()) << "rows share their boundary byte";
    }
  }
  EXPECT_EQ(data.train.size(), static_cast<int64_t>((stream.size() - 1) / 8));
  EXPECT_EQ(rebuilt, stream.substr(0, rebuilt.size()));
  EXPECT_LT(stream.size() - rebuilt.size(), 8u) << "only the last partial row is dropped";
}

TEST(TextDataset, BigramBitsPerByteOfAHandComputedCase) {
  // Train pairs: (a,b) twice, (b,a) once. Add-one smoothing over 256 bytes:
  // P(b|a) = (2+1)/(2+256), P(a|b) = (1+1)/(1+256), P(z|z) = 1/256 (unseen).
  const TokenSplit train = make_token_split({"abab"}, 8, false);
  const TokenSplit eval = make_token_split({"ab", "ba", "zz"}, 8, false);
  const double expected = (std::log2(258.0 / 3.0) + std::log2(257.0 / 2.0) + 8.0) / 3.0;
  EXPECT_NEAR(bigram_bits_per_byte(train, eval), expected, 1e-12);
  // Nothing seen: uniform, 8 bits a byte.
  EXPECT_NEAR(bigram_bits_per_byte(make_token_split({}, 8, false), eval), 8.0, 1e-12);
  // Weighted by targets, not rows: one row of 3 (a,b) pairs against one of (z,z).
  const TokenSplit uneven = make_token_split({"abab", "zz"}, 8, false);  // pairs ab, ba, ab, zz
  const double uneven_expected =
      (2 * std::log2(258.0 / 3.0) + std::log2(257.0 / 2.0) + 8.0) / 4.0;
  EXPECT_NEAR(bigram_bits_per_byte(train, uneven), uneven_expected, 1e-12);
  EXPECT_THROW(bigram_bits_per_byte(train, make_token_split({"a"}, 8, false)), Error);
}

class TextDatasetFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dtrain_text_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  fs::path dir_;
};

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST_F(TextDatasetFiles, ReadsOneDocumentPerLine) {
  const std::string path = write("docs.txt", "first\r\n\nsecond line\n\r\n third \xc3\xa9\nlast without newline");
  EXPECT_EQ(read_documents(path),
            (std::vector<std::string>{"first", "second line", " third \xc3\xa9", "last without newline"}));
}

TEST_F(TextDatasetFiles, ReadErrorsNameThePathAndTheFix) {
  const std::string missing = (dir_ / "missing.txt").string();
  const std::string message = error_of([&] { read_documents(missing); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
  EXPECT_NE(message.find("--data-file"), std::string::npos) << message;
  EXPECT_NE(message.find("No such file"), std::string::npos) << message;
  const std::string blank = write("blank.txt", "\n\r\n\n");
  const std::string empty_message = error_of([&] { read_documents(blank); });
  EXPECT_NE(empty_message.find(blank + " holds no documents"), std::string::npos) << empty_message;
  EXPECT_NE(error_of([&] { read_documents(write("empty.txt", "")); }).find("holds no documents"), std::string::npos);
  EXPECT_NE(error_of([&] { read_documents(dir_.string()); }).find("is a folder"), std::string::npos);
}

TEST(TextDataset, RefusesSplitsThatLeaveNothingToTrainOn) {
  const std::string message = error_of([] { make_text_dataset({"abc", "def"}, 4, 2, 1, false); });
  EXPECT_EQ(message, "holding out 2 validation documents of 2 leaves nothing to train on; hold out between 0 and 1");
  EXPECT_THROW(make_text_dataset({"abc"}, 0, 0, 1, false), UsageError);
  EXPECT_THROW(make_text_dataset({"abc"}, 4, -1, 1, false), UsageError);
  // Packed, "abc\ndef\n" is 8 bytes, one short of a row of block size 8.
  const std::string short_stream = error_of([] { make_text_dataset({"abc", "def"}, 8, 0, 1, true); });
  EXPECT_NE(short_stream.find("fewer than block size + 1 = 9 bytes"), std::string::npos) << short_stream;
  EXPECT_NO_THROW(make_text_dataset({"abc", "defg"}, 8, 0, 1, true));
}

bool have_bible() { return std::system("command -v bible >/dev/null 2>&1") == 0; }

TEST(TextDataset, KjvIsTheBibleOneVersePerDocument) {
  if (!have_bible()) DTRAIN_SKIP_OUTSIDE_CI("no bible command (apt-get install bible-kjv)");
  const std::vector<std::string> verses = kjv_documents();
  EXPECT_EQ(verses.size(), 31102u);
  ASSERT_FALSE(verses.empty());
  EXPECT_EQ(verses.front(), "In the beginning God created the heaven and the earth.");
  EXPECT_EQ(verses.back(), "The grace of our Lord Jesus Christ be with you all. Amen.");
  size_t bytes = 0;
  for (const auto& verse : verses) bytes += verse.size();
  EXPECT_GT(bytes, 4'000'000u);
  // The sizes of the workload, for docs and configs.
  for (int64_t block_size : {64, 128}) {
    const TokenSplit rows = make_token_split(verses, block_size, false);
    const TokenSplit packed = make_token_split(verses, block_size, true);
    expect_well_formed(rows, block_size);
    std::cout << "[ KJV      ] block size " << block_size << ": " << rows.size() << " rows of verse pieces ("
              << rows.target_counts.sum().item<int64_t>() << " targets, "
              << 100.0 * rows.target_counts.sum().item<double>() / double(rows.size() * block_size)
              << "% of positions), " << packed.size() << " packed rows\n";
  }
  const TextDataset data = make_text_dataset(verses, 128, 1000, 1, false);
  std::cout << "[ KJV      ] bigram baseline, 1000 validation verses (seed 1): "
            << bigram_bits_per_byte(data.train, data.validation) << " bits per byte\n";
}

TEST(TextDataset, KjvWithoutTheBibleCommandNamesThePackage) {
  const char* old_path = std::getenv("PATH");
  const std::string saved = old_path ? old_path : "";
  ::setenv("PATH", "/nonexistent", 1);
  const std::string message = error_of([] { kjv_documents(); });
  ::setenv("PATH", saved.c_str(), 1);
  EXPECT_NE(message.find("apt-get install bible-kjv"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

}  // namespace
}  // namespace dtrain
