// In-memory classification datasets: Fashion-MNIST from its IDX files, and a
// synthetic set whose labels come from a fixed random teacher network (so
// there is something to learn) of any size. Inputs are float [N, 1, 28, 28],
// targets int64 [N].
#pragma once
#include "cli/config.h"

#include <ATen/core/Tensor.h>

#include <string>

namespace dtrain {

struct Split {
  at::Tensor inputs;
  at::Tensor targets;
  int64_t size() const { return targets.defined() ? targets.size(0) : 0; }
};

struct Dataset {
  std::string name;
  Split train;
  Split validation;  // held out of the training set (empty unless --validation-size)
  Split test;
  int64_t num_classes = 0;
  std::vector<int64_t> input_shape;  // per sample, e.g. {1, 28, 28}
};

// Pixels normalized as (p/255 - 0.2860) / 0.3530, Fashion-MNIST's mean and std.
Dataset load_fashion_mnist(const std::string& data_dir);

Dataset make_synthetic(int64_t train_samples, int64_t test_samples, int64_t num_classes, uint64_t seed);

Dataset load_dataset(const DataOptions& options);

// Moves `size` training samples, chosen by `seed` (data/sampler.h
// validation_indices), into dataset.validation; the training set keeps the
// rest in their order. Throws UsageError if nothing would be left to train on.
void hold_out_validation(Dataset& dataset, int64_t size, uint64_t seed);

}  // namespace dtrain
