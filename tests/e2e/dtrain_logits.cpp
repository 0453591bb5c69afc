// Test helper for the PyTorch interop test: builds the model that dtrain's
// model options describe, loads WEIGHTS into it, runs it on a fixed input and
// writes {"input", "logits"} to OUT (readable by torch.load).
// Usage: dtrain_logits WEIGHTS OUT [dtrain model options, e.g. --hidden 64,32]
#include "cli/options.h"
#include "io/weights.h"
#include "models/models.h"

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: dtrain_logits WEIGHTS OUT [--model mlp|cnn] [--hidden W1,W2,...]\n";
    return 2;
  }
  try {
    const dtrain::Config config = dtrain::parse_options(std::vector<std::string>(argv + 3, argv + argc)).config;
    auto model = dtrain::make_model(config.model, {1, 28, 28}, 10);
    dtrain::load_into(*model, dtrain::read_weights(argv[1]), argv[1]);
    torch::NoGradGuard no_grad;
    model->eval();
    const auto input = torch::sin(torch::arange(8 * 784, torch::kFloat) * 0.01).reshape({8, 1, 28, 28});
    dtrain::save_weights({{"input", input}, {"logits", model->forward(input)}}, argv[2]);
  } catch (const std::exception& e) {
    std::cerr << "dtrain_logits: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
