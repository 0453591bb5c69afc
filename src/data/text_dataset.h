// Byte-level text for the language model: documents (one per line of a file,
// or the King James Bible's verses), cut into rows of next-byte prediction
// targets, a held-out validation split of whole documents, and the bigram
// baseline the model has to beat. Tokens are bytes, so the vocabulary is 256.
//
// Rows. A row holds up to block_size + 1 consecutive bytes b_0..b_n of one
// document: inputs b_0..b_{n-1}, targets b_1..b_n (target t is the byte after
// input t), then padding to block_size columns: input 0, target -1. Causal
// attention makes the real positions independent of the padding
// (models/gpt.h), so the padded positions only have to be left out of the loss.
//
// Pieces. A document of L bytes has L - 1 targets. One longer than
// block_size + 1 bytes is cut into pieces starting at bytes 0, B, 2B, ...
// (B = block_size), each up to B + 1 bytes: consecutive pieces share one
// boundary byte (the last target of one is the first input of the next), so
// every next-byte prediction of the document is made exactly once. A piece
// starts without the context before it, as any fixed-window LM sees. Pieces
// with no target (a 1-byte document, or a last piece of 1 byte) are dropped.
//
// Packing (pack = true), as in LM pre-training: the split's documents, in
// order, each followed by '\n', form one stream of bytes, cut the same way
// into rows of exactly B + 1 bytes sharing boundary bytes; the last partial
// row is dropped, so no row is padded. '\n' never occurs inside a document (a
// document is a line), so it marks the document boundary unambiguously, as
// GPT-2's <|endoftext|> does, and the stream is the text file itself.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dtrain {

// Rows of one split. inputs and targets are int64 [N, block_size]; targets are
// -1 exactly where there is no target (padding). target_counts is int64 [N],
// the number of targets != -1 in each row (>= 1).
struct TokenSplit {
  at::Tensor inputs;
  at::Tensor targets;
  at::Tensor target_counts;
  int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
};

struct TextDataset {
  TokenSplit train, validation;
  int64_t block_size = 0;
  int64_t train_documents = 0, validation_documents = 0;
};

// One document per line of `path`, as bytes: empty lines are skipped and a
// trailing '\r' is stripped. Throws Error naming the path and the fix if the
// file cannot be read or holds no document.
std::vector<std::string> read_documents(const std::string& path);

// The King James Bible, one verse a document, in canonical order (Genesis 1:1
// to Revelation 22:21, 31,102 verses), from `bible -f gen1:1-rev22:21`
// (Debian's bible-kjv). The leading reference ("Ge1:1 ") is stripped: it is
// metadata, not text, and a verse sampled on its own carries nothing that
// predicts its book, chapter and number, so those bytes (6% of the total)
// would add noise to bits per byte rather than measure language modelling.
// Throws Error naming `apt-get install bible-kjv` if the command is missing or
// fails, or its output is not verses.
std::vector<std::string> kjv_documents();

// `validation_documents` whole documents, chosen by `seed`
// (data/sampler.h validation_indices), form the validation split; the rest,
// in their order, the training split. A document is never cut across splits.
// Throws UsageError if block_size < 1, if nothing would be left to train on,
// or if the training split has no target.
TextDataset make_text_dataset(const std::vector<std::string>& documents, int64_t block_size,
                              int64_t validation_documents, uint64_t seed, bool pack);

// The rows of `documents` as described above (one split).
TokenSplit make_token_split(const std::vector<std::string>& documents, int64_t block_size, bool pack);

// The baseline: a bigram model P(next | byte) with add-one (Laplace)
// smoothing over the 256 bytes, fitted on train's (input, target) pairs and
// evaluated on eval's, in bits per target byte:
//   -mean over eval pairs (a, b) of log2((count(a, b) + 1) / (count(a) + 256)).
// Throws Error if eval has no target.
double bigram_bits_per_byte(const TokenSplit& train, const TokenSplit& eval);

}  // namespace dtrain
