// In-memory datasets. Classification: Fashion-MNIST from its IDX files, and a
// synthetic set whose labels come from a fixed random teacher network (so
// there is something to learn) of any size; inputs are float [N, 1, 28, 28],
// targets int64 [N]. Language modelling (data/text_dataset.h): byte tokens,
// inputs and targets int64 [N, block_size], targets -1 on padding, and
// target_counts, the targets of each row.
#pragma once
#include "cli/config.h"

#include <ATen/core/Tensor.h>

#include <string>

namespace dtrain {

struct Split {
  at::Tensor inputs;
  at::Tensor targets;
  // Token datasets: int64 [N], the targets of each row (padding excluded), so
  // the loss can be weighted by tokens. Undefined for classification (one
  // target per sample).
  at::Tensor target_counts;
  int64_t size() const { return targets.defined() ? targets.size(0) : 0; }
};

struct Dataset {
  std::string name;
  Split train;
  Split validation;  // held out of the training set (empty unless --validation-size)
  Split test;
  int64_t num_classes = 0;            // token datasets: the vocabulary (256 bytes)
  std::vector<int64_t> input_shape;  // per sample, e.g. {1, 28, 28}; token datasets: {block_size}
  bool tokens = false;               // a language-modelling set: the loss counts target tokens
};

struct TextDataset;
// A language-modelling Dataset from text rows: train and validation, no test
// split (held-out documents are the validation split).
Dataset token_dataset(const std::string& name, const TextDataset& text);

// Pixels normalized as (p/255 - 0.2860) / 0.3530, Fashion-MNIST's mean and std.
Dataset load_fashion_mnist(const std::string& data_dir);

Dataset make_synthetic(int64_t train_samples, int64_t test_samples, int64_t num_classes, uint64_t seed);

// The dataset `config` names, its validation split held out (--validation-size,
// chosen by --seed; text datasets hold out whole documents).
Dataset load_dataset(const Config& config);

// Moves `size` training samples, chosen by `seed` (data/sampler.h
// validation_indices), into dataset.validation; the training set keeps the
// rest in their order. Throws UsageError if nothing would be left to train on.
void hold_out_validation(Dataset& dataset, int64_t size, uint64_t seed);

}  // namespace dtrain
