// Loading the dataset a config names: Fashion-MNIST from IDX files, the
// synthetic teacher set, the text sets, and the validation hold-out.
#include "data/dataset.h"

#include "common/error.h"
#include "data/idx_reader.h"
#include "data/sampler.h"
#include "data/text_dataset.h"

#include <torch/torch.h>

namespace dtrain {

namespace {

constexpr double kFashionMean = 0.2860;
constexpr double kFashionStd = 0.3530;

Split read_split(const std::string& data_dir, const std::string& prefix) {
  const std::string images_path = data_dir + "/" + prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = data_dir + "/" + prefix + "-labels-idx1-ubyte.gz";
  IdxArray images = read_idx_file(images_path, 3);
  IdxArray labels = read_idx_file(labels_path, 1);
  if (images.dims[1] != 28 || images.dims[2] != 28) {
    throw Error(images_path + " holds " + std::to_string(images.dims[1]) + "x" +
                std::to_string(images.dims[2]) + " images; Fashion-MNIST's are 28x28");
  }
  if (images.dims[0] != labels.dims[0]) {
    throw Error(images_path + " has " + std::to_string(images.dims[0]) + " images but " + labels_path +
                " has " + std::to_string(labels.dims[0]) + " labels; the files do not belong together");
  }
  for (uint8_t label : labels.data) {
    if (label > 9) throw Error(labels_path + " has label " + std::to_string(label) + "; Fashion-MNIST's are 0-9");
  }
  const int64_t n = images.dims[0];
  Split split;
  split.inputs = torch::from_blob(images.data.data(), {n, 1, 28, 28}, torch::kUInt8)
                     .to(torch::kFloat)
                     .div_(255.0)
                     .sub_(kFashionMean)
                     .div_(kFashionStd);
  split.targets = torch::from_blob(labels.data.data(), {n}, torch::kUInt8).to(torch::kLong);
  return split;
}

}  // namespace

Dataset load_fashion_mnist(const std::string& data_dir) {
  Dataset dataset;
  dataset.name = "fashion-mnist";
  dataset.train = read_split(data_dir, "train");
  dataset.test = read_split(data_dir, "t10k");
  dataset.num_classes = 10;
  dataset.input_shape = {1, 28, 28};
  return dataset;
}

Dataset make_synthetic(int64_t train_samples, int64_t test_samples, int64_t num_classes, uint64_t seed) {
  // A private generator: the data never depends on the global RNG state.
  auto generator = at::detail::createCPUGenerator(seed);
  const int64_t features = 28 * 28;
  const int64_t teacher_width = 64;
  const int64_t total = train_samples + test_samples;
  auto inputs = at::randn({total, features}, generator);
  auto w1 = at::randn({features, teacher_width}, generator) / std::sqrt(double(features));
  auto w2 = at::randn({teacher_width, num_classes}, generator) / std::sqrt(double(teacher_width));
  auto targets = at::tanh(inputs.mm(w1)).mm(w2).argmax(1);
  inputs = inputs.view({total, 1, 28, 28});
  Dataset dataset;
  dataset.name = "synthetic";
  dataset.train = {inputs.narrow(0, 0, train_samples).contiguous(), targets.narrow(0, 0, train_samples).contiguous()};
  dataset.test = {inputs.narrow(0, train_samples, test_samples).contiguous(),
                  targets.narrow(0, train_samples, test_samples).contiguous()};
  dataset.num_classes = num_classes;
  dataset.input_shape = {1, 28, 28};
  return dataset;
}

Dataset token_dataset(const std::string& name, const TextDataset& text) {
  Dataset dataset;
  dataset.name = name;
  dataset.train = {text.train.inputs, text.train.targets, text.train.target_counts};
  dataset.validation = {text.validation.inputs, text.validation.targets, text.validation.target_counts};
  dataset.num_classes = 256;
  dataset.input_shape = {text.block_size};
  dataset.tokens = true;
  return dataset;
}

Dataset load_dataset(const Config& config) {
  const DataOptions& options = config.data;
  const bool text = options.dataset == DatasetKind::Kjv || options.dataset == DatasetKind::Text;
  if (text != (config.model.kind == ModelKind::Gpt)) {
    throw UsageError(text ? std::string("--dataset ") + to_string(options.dataset) +
                                " is text: train it with --model gpt"
                          : std::string("--model gpt trains on text: use --dataset kjv or --dataset text --data-file F"));
  }
  Dataset dataset;
  switch (options.dataset) {
    case DatasetKind::FashionMnist:
      dataset = load_fashion_mnist(options.data_dir);
      break;
    case DatasetKind::Synthetic:
      dataset = make_synthetic(options.synthetic_train_samples, options.synthetic_test_samples,
                               options.synthetic_classes, options.synthetic_seed);
      break;
    case DatasetKind::Kjv:
    case DatasetKind::Text: {
      if (options.dataset == DatasetKind::Text && options.data_file.empty()) {
        throw UsageError("--dataset text needs --data-file PATH (a text file, one document per line)");
      }
      const auto documents =
          options.dataset == DatasetKind::Kjv ? kjv_documents() : read_documents(options.data_file);
      return token_dataset(to_string(options.dataset),
                           make_text_dataset(documents, config.model.block_size, options.validation_size,
                                             config.run.seed, options.pack));
    }
  }
  if (options.validation_size > 0) hold_out_validation(dataset, options.validation_size, config.run.seed);
  return dataset;
}

void hold_out_validation(Dataset& dataset, int64_t size, uint64_t seed) {
  const int64_t available = dataset.train.size();
  if (size >= available) {
    throw UsageError("--validation-size " + std::to_string(size) + " leaves nothing to train on (the training set has " +
                     std::to_string(available) + " samples); hold out fewer");
  }
  const std::vector<int64_t> held_out = validation_indices(available, size, seed);
  std::vector<int64_t> kept;
  kept.reserve(static_cast<size_t>(available - size));
  size_t next = 0;
  for (int64_t i = 0; i < available; ++i) {
    if (next < held_out.size() && held_out[next] == i) ++next;
    else kept.push_back(i);
  }
  auto take = [](const Split& from, std::vector<int64_t> indices) {
    const auto index = torch::tensor(indices, torch::kLong);
    return Split{from.inputs.index_select(0, index), from.targets.index_select(0, index)};
  };
  dataset.validation = take(dataset.train, held_out);
  dataset.train = take(dataset.train, std::move(kept));
}

}  // namespace dtrain
