// Text for the language model: documents read and cut into rows of
// next-byte prediction, padded or packed, with their target counts.
#include "data/text_dataset.h"

#include "common/error.h"
#include "data/sampler.h"

#include <torch/torch.h>

#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace dtrain {

namespace {

constexpr int64_t kVocabulary = 256;
constexpr const char* kBibleCommand = "bible -f gen1:1-rev22:21";

// "Ge1:1", "1Chr12:3", "SSol2:1": an optional digit, a book's letters, chapter:verse.
bool is_verse_reference(const std::string& text) {
  size_t i = 0;
  if (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  const size_t letters = i;
  while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]))) ++i;
  if (i == letters) return false;
  auto digits = [&] {
    const size_t start = i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
    return i > start;
  };
  if (!digits() || i >= text.size() || text[i] != ':') return false;
  ++i;
  return digits() && i == text.size();
}

// Builds the rows of the header's description. Each call of add_row appends
// one row of `count` bytes (2 <= count <= block_size + 1).
class RowBuilder {
 public:
  explicit RowBuilder(int64_t block_size) : block_size_(block_size) {}

  void add_row(const char* bytes, int64_t count) {
    for (int64_t t = 0; t < block_size_; ++t) {
      const bool real = t + 1 < count;
      inputs_.push_back(real ? static_cast<unsigned char>(bytes[t]) : 0);
      targets_.push_back(real ? static_cast<unsigned char>(bytes[t + 1]) : -1);
    }
    counts_.push_back(count - 1);
  }

  // Pieces starting at 0, B, 2B, ... of up to B + 1 bytes; with `full_only`,
  // only pieces of exactly B + 1 bytes.
  void add_pieces(const char* bytes, int64_t length, bool full_only) {
    for (int64_t start = 0; start + 1 < length; start += block_size_) {
      const int64_t count = std::min(block_size_ + 1, length - start);
      if (full_only && count < block_size_ + 1) break;
      add_row(bytes + start, count);
    }
  }

  TokenSplit finish() {
    const int64_t rows = static_cast<int64_t>(counts_.size());
    TokenSplit split;
    split.inputs = torch::tensor(inputs_, torch::kLong).view({rows, block_size_});
    split.targets = torch::tensor(targets_, torch::kLong).view({rows, block_size_});
    split.target_counts = torch::tensor(counts_, torch::kLong);
    return split;
  }

 private:
  int64_t block_size_;
  std::vector<int64_t> inputs_, targets_, counts_;
};

TokenSplit token_split(const std::vector<const std::string*>& documents, int64_t block_size, bool pack) {
  RowBuilder rows(block_size);
  if (pack) {
    std::string stream;
    size_t total = 0;
    for (const std::string* document : documents) total += document->size() + 1;
    stream.reserve(total);
    for (const std::string* document : documents) stream.append(*document).push_back('\n');
    rows.add_pieces(stream.data(), static_cast<int64_t>(stream.size()), /*full_only=*/true);
  } else {
    for (const std::string* document : documents) {
      rows.add_pieces(document->data(), static_cast<int64_t>(document->size()), /*full_only=*/false);
    }
  }
  return rows.finish();
}

// The (input, target) pairs of a split as input * 256 + target.
at::Tensor pair_codes(const TokenSplit& split) {
  if (split.size() == 0) return torch::empty({0}, torch::kLong);
  const auto real = split.targets.ge(0);
  return split.inputs.masked_select(real) * kVocabulary + split.targets.masked_select(real);
}

}  // namespace

std::vector<std::string> read_documents(const std::string& path) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) {
    throw Error(path + " is a folder; pass --data-file a text file, one document per line");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error("cannot read " + path + " (" + std::strerror(errno) +
                "); pass --data-file a readable text file, one document per line");
  }
  std::vector<std::string> documents;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) documents.push_back(line);
  }
  if (in.bad()) {
    throw Error("reading " + path + " failed (" + std::strerror(errno) + "); check the file and try again");
  }
  if (documents.empty()) {
    throw Error(path + " holds no documents (no non-empty line); a text dataset needs one document per line");
  }
  return documents;
}

std::vector<std::string> kjv_documents() {
  const std::string fix = "install it with apt-get install bible-kjv";
  // stderr is discarded: a missing command is recognized by sh's exit status 127.
  FILE* pipe = ::popen((std::string(kBibleCommand) + " 2>/dev/null").c_str(), "r");
  if (pipe == nullptr) throw Error(std::string("cannot run ") + kBibleCommand + " (" + std::strerror(errno) + ")");
  std::string output;
  char buffer[1 << 16];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, got);
  const int status = ::pclose(pipe);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const int code = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (code == 127) throw Error("the KJV dataset needs the bible command, which is missing; " + fix);
    throw Error(std::string(kBibleCommand) + " failed (exit status " + std::to_string(code) + "); " + fix);
  }
  std::vector<std::string> verses;
  size_t start = 0;
  while (start < output.size()) {
    size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    const std::string line = output.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space + 1 == line.size() || !is_verse_reference(line.substr(0, space))) {
      throw Error(std::string(kBibleCommand) + " printed '" + printable_excerpt(line) +
                  "', not a verse like 'Ge1:1 In the beginning...'; " + fix);
    }
    verses.push_back(line.substr(space + 1));
  }
  if (verses.empty()) throw Error(std::string(kBibleCommand) + " printed no verses; " + fix);
  return verses;
}

TokenSplit make_token_split(const std::vector<std::string>& documents, int64_t block_size, bool pack) {
  if (block_size < 1) {
    throw UsageError("block size " + std::to_string(block_size) + " must be at least 1; raise --block-size");
  }
  std::vector<const std::string*> all;
  all.reserve(documents.size());
  for (const std::string& document : documents) all.push_back(&document);
  return token_split(all, block_size, pack);
}

TextDataset make_text_dataset(const std::vector<std::string>& documents, int64_t block_size,
                              int64_t validation_documents, uint64_t seed, bool pack) {
  if (block_size < 1) {
    throw UsageError("block size " + std::to_string(block_size) + " must be at least 1; raise --block-size");
  }
  const int64_t total = static_cast<int64_t>(documents.size());
  if (validation_documents < 0 || validation_documents >= total) {
    throw UsageError("holding out " + std::to_string(validation_documents) + " validation documents of " +
                     std::to_string(total) + " leaves nothing to train on; hold out between 0 and " +
                     std::to_string(total - 1));
  }
  const std::vector<int64_t> held_out = validation_indices(total, validation_documents, seed);
  std::vector<const std::string*> train, validation;
  size_t next = 0;
  for (int64_t i = 0; i < total; ++i) {
    if (next < held_out.size() && held_out[next] == i) {
      validation.push_back(&documents[static_cast<size_t>(i)]);
      ++next;
    } else {
      train.push_back(&documents[static_cast<size_t>(i)]);
    }
  }
  TextDataset dataset;
  dataset.block_size = block_size;
  dataset.train_documents = static_cast<int64_t>(train.size());
  dataset.validation_documents = static_cast<int64_t>(validation.size());
  dataset.train = token_split(train, block_size, pack);
  // Always whole documents: the score of a packed run and an unpacked one
  // is the same measurement (no context carried across documents).
  dataset.validation = token_split(validation, block_size, /*pack=*/false);
  const std::string why = pack ? "fewer than block size + 1 = " + std::to_string(block_size + 1) + " bytes"
                               : "every document is shorter than 2 bytes";
  if (dataset.train.size() == 0) {
    throw UsageError("the " + std::to_string(dataset.train_documents) + " training documents give no rows (" + why +
                     "); use more text or a smaller --block-size");
  }
  if (validation_documents > 0 && dataset.validation.size() == 0) {
    throw UsageError("the " + std::to_string(validation_documents) +
                     " validation documents give no rows (every one is shorter than 2 bytes); hold out more documents");
  }
  return dataset;
}

double bigram_bits_per_byte(const TokenSplit& train, const TokenSplit& eval) {
  const auto eval_pairs = pair_codes(eval);
  if (eval_pairs.numel() == 0) throw Error("the bigram baseline needs an evaluation split with targets; it has none");
  const auto counts =
      torch::bincount(pair_codes(train), {}, kVocabulary * kVocabulary).to(torch::kDouble).view({kVocabulary, kVocabulary});
  const auto log2_probability = ((counts + 1.0) / (counts.sum(1, /*keepdim=*/true) + double(kVocabulary))).log2();
  return -log2_probability.view({-1}).index_select(0, eval_pairs).mean().item<double>();
}

}  // namespace dtrain
