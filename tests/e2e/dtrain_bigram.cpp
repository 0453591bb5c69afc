// Test helper for the language-model test: the bigram baseline of a text
// dataset, fitted on exactly the training split dtrain trains on and
// evaluated on its validation split (the same options, so the same documents
// held out by the same seed). Prints bits per byte.
// Usage: dtrain_bigram [dtrain options, e.g. --config configs/kjv_gpt.ini]
#include "cli/options.h"
#include "data/dataset.h"
#include "data/text_dataset.h"

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  try {
    const dtrain::Config config = dtrain::parse_options(std::vector<std::string>(argv + 1, argv + argc)).config;
    const dtrain::Dataset data = dtrain::load_dataset(config);
    auto as_tokens = [](const dtrain::Split& split) {
      return dtrain::TokenSplit{split.inputs, split.targets, split.target_counts};
    };
    std::printf("%.6f\n", dtrain::bigram_bits_per_byte(as_tokens(data.train), as_tokens(data.validation)));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dtrain_bigram: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
