// The GPT (models/gpt.h): its documented names and shapes, the tied head,
// causality and the end-padding property the trainer relies on, and logits
// equal to the PyTorch definition of docs/models.md in both directions of
// weight exchange (tests/models/gpt_reference.py, run with Debian's
// python3-torch).
#include "models/gpt.h"

#include "common/error.h"
#include "io/weights.h"
#include "models/models.h"
#include "skip.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

namespace dtrain {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPython = "/usr/bin/python3";  // Debian's python3-torch; the first python3 on PATH may lack torch

// Two layers over bytes, of the given sizes.
GptOptions small_options(int64_t block_size, int64_t n_head, int64_t n_embd) {
  GptOptions options;
  options.vocab_size = 256;
  options.block_size = block_size;
  options.n_layer = 2;
  options.n_head = n_head;
  options.n_embd = n_embd;
  return options;
}

GptOptions tiny_options() { return small_options(16, 2, 16); }

// Every parameter drawn afresh (biases and LayerNorms included, which start
// at 0 and 1), so a test sees every term of the computation, and large
// enough that the logits are of order 1 and beyond.
void randomize(Gpt& model, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& [name, parameter] : named_trainable_parameters(model)) {
    const bool layer_norm_scale = name.find("ln_") != std::string::npos && name.find(".weight") != std::string::npos;
    parameter.normal_(layer_norm_scale ? 1.0 : 0.0, layer_norm_scale ? 0.2 : 0.5);
  }
}

at::Tensor random_tokens(int64_t rows, int64_t length, uint64_t seed) {
  auto generator = at::detail::createCPUGenerator(seed);
  return at::randint(0, 256, {rows, length}, generator, torch::kLong);
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

// max |a - b| relative to max |b|.
double relative_difference(const at::Tensor& a, const at::Tensor& b) {
  return max_abs(a - b) / std::max(max_abs(b), 1e-30);
}

std::vector<std::pair<std::string, std::vector<int64_t>>> documented_parameters(const GptOptions& o) {
  const int64_t c = o.n_embd;
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {{"wte.weight", {o.vocab_size, c}},
                                                                        {"wpe.weight", {o.block_size, c}}};
  for (int64_t i = 0; i < o.n_layer; ++i) {
    const std::string h = "h." + std::to_string(i) + ".";
    for (const auto& entry : std::vector<std::pair<std::string, std::vector<int64_t>>>{
             {"ln_1.weight", {c}},
             {"ln_1.bias", {c}},
             {"attn.c_attn.weight", {3 * c, c}},
             {"attn.c_attn.bias", {3 * c}},
             {"attn.c_proj.weight", {c, c}},
             {"attn.c_proj.bias", {c}},
             {"ln_2.weight", {c}},
             {"ln_2.bias", {c}},
             {"mlp.c_fc.weight", {4 * c, c}},
             {"mlp.c_fc.bias", {4 * c}},
             {"mlp.c_proj.weight", {c, 4 * c}},
             {"mlp.c_proj.bias", {c}},
         }) {
      expected.emplace_back(h + entry.first, entry.second);
    }
  }
  expected.push_back({"ln_f.weight", {c}});
  expected.push_back({"ln_f.bias", {c}});
  expected.push_back({"lm_head.weight", {o.vocab_size, c}});
  return expected;
}

std::string file_text(const std::string& relative_path) {
  std::ifstream in(std::string(DTRAIN_SOURCE_DIR) + "/" + relative_path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(Gpt, ParameterNamesAndShapesAreTheDocumentedOnes) {
  GptOptions options = tiny_options();
  options.n_layer = 3;
  options.vocab_size = 100;  // every size distinct, so a swapped dimension shows
  options.block_size = 12;
  options.n_embd = 8;
  auto model = make_gpt(options);
  const auto expected = documented_parameters(options);
  const auto named = model->named_parameters();
  ASSERT_EQ(named.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(named[i].key(), expected[i].first) << "at " << i;
    EXPECT_EQ(named[i].value().sizes().vec(), expected[i].second) << expected[i].first;
  }
  EXPECT_TRUE(model->buffers().empty()) << "no buffers: the causal mask is not part of the state";

  // docs/models.md's ## gpt section names every parameter (h.<i>. for the blocks).
  const std::string all = file_text("docs/models.md");
  const size_t section = all.find("\n## gpt");
  ASSERT_NE(section, std::string::npos) << "docs/models.md has no ## gpt section";
  const std::string gpt_docs = all.substr(section);
  for (const auto& [name, shape] : expected) {
    std::string documented = name;
    if (documented.rfind("h.", 0) == 0) documented = "h.<i>." + documented.substr(documented.find('.', 2) + 1);
    EXPECT_NE(gpt_docs.find("`" + documented + "`"), std::string::npos) << documented << " is not in docs/models.md";
  }
  // The documented count: V C + B C + n_layer (12 C^2 + 13 C) + 2 C.
  int64_t count = 0;
  for (const auto& parameter : trainable_parameters(*model)) count += parameter.numel();
  const int64_t c = options.n_embd;
  EXPECT_EQ(count, options.vocab_size * c + options.block_size * c + options.n_layer * (12 * c * c + 13 * c) + 2 * c);
}

TEST(Gpt, TheDocumentedPyTorchDefinitionIsTheTestedOne) {
  const std::string script = file_text("tests/models/gpt_reference.py");
  const std::string begin_marker = "# ---- The definition documented", end_marker = "# ---- end of the documented definition";
  const size_t begin = script.find('\n', script.find(begin_marker));
  const size_t end = script.find(end_marker);
  ASSERT_TRUE(begin != std::string::npos && end != std::string::npos && begin < end);
  const std::string definition = script.substr(begin + 1, end - begin - 1);
  EXPECT_NE(definition.find("class Gpt(nn.Module)"), std::string::npos);
  EXPECT_NE(file_text("docs/models.md").find(definition), std::string::npos)
      << "docs/models.md's ## gpt does not quote tests/models/gpt_reference.py's definition verbatim";
}

TEST(Gpt, TheHeadIsTiedToTheTokenEmbedding) {
  auto model = make_gpt(tiny_options());
  auto named = model->named_parameters();
  EXPECT_TRUE(named["lm_head.weight"].is_same(named["wte.weight"]));
  const auto unique = trainable_parameters(*model);
  EXPECT_EQ(unique.size(), named.size() - 1);
  EXPECT_EQ(std::count_if(unique.begin(), unique.end(), [&](const at::Tensor& t) { return t.is_same(named["wte.weight"]); }),
            1);
  EXPECT_TRUE(unique[0].is_same(named["wte.weight"]));
  // Weight files keep both names, as PyTorch's state_dict does.
  EXPECT_EQ(model_state(*model).size(), named.size());

  // One weight, so one gradient holding both uses.
  const auto tokens = random_tokens(2, 8, 1);
  model->forward(tokens).sum().backward();
  EXPECT_TRUE(named["wte.weight"].grad().defined());
  EXPECT_TRUE(named["lm_head.weight"].grad().is_same(named["wte.weight"].grad()));
}

TEST(Gpt, InitializationFollowsNanoGptAndTheSeed) {
  GptOptions options = tiny_options();
  options.n_embd = 64;
  options.n_layer = 8;
  torch::manual_seed(5);
  auto a = make_gpt(options);
  torch::manual_seed(5);
  auto b = make_gpt(options);
  torch::manual_seed(6);
  auto c = make_gpt(options);
  const auto sa = model_state(*a), sb = model_state(*b), sc = model_state(*c);
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(torch::equal(sa[i].second, sb[i].second)) << sa[i].first;
  auto na = a->named_parameters();
  EXPECT_FALSE(torch::equal(na["wte.weight"], c->named_parameters()["wte.weight"]));
  EXPECT_NEAR(na["wte.weight"].std().item<double>(), 0.02, 0.002);
  EXPECT_NEAR(na["h.0.mlp.c_fc.weight"].std().item<double>(), 0.02, 0.002);
  EXPECT_NEAR(na["h.3.attn.c_proj.weight"].std().item<double>(), 0.02 / std::sqrt(16.0), 0.0005);
  EXPECT_NEAR(na["h.3.mlp.c_proj.weight"].std().item<double>(), 0.02 / std::sqrt(16.0), 0.0005);
  EXPECT_TRUE(torch::equal(na["h.1.attn.c_attn.bias"], torch::zeros({3 * 64})));
  EXPECT_TRUE(torch::equal(na["ln_f.weight"], torch::ones({64})));
  EXPECT_TRUE(torch::equal(na["h.2.ln_1.bias"], torch::zeros({64})));
}

TEST(Gpt, ChangingTokenJChangesNoLogitBeforeJ) {
  auto model = make_gpt(tiny_options());
  randomize(*model, 2);
  torch::NoGradGuard no_grad;
  const auto tokens = random_tokens(3, 16, 3);
  const auto logits = model->forward(tokens);
  ASSERT_EQ(logits.sizes().vec(), (std::vector<int64_t>{3, 16, 256}));
  for (int64_t j : {0, 1, 7, 15}) {
    auto changed = tokens.clone();
    changed[1][j] = (tokens[1][j].item<int64_t>() + 1) % 256;
    const auto other = model->forward(changed);
    if (j > 0) {
      EXPECT_EQ(max_abs(other[1].narrow(0, 0, j) - logits[1].narrow(0, 0, j)), 0.0) << "token " << j;
    }
    EXPECT_GT(max_abs(other[1][j] - logits[1][j]), 1e-3) << "token " << j << " changed nothing at " << j;
    // Other rows of the batch never see row 1.
    EXPECT_EQ(max_abs(other[0] - logits[0]), 0.0);
    EXPECT_EQ(max_abs(other[2] - logits[2]), 0.0);
  }
}

TEST(Gpt, PaddingAtTheEndChangesNoRealPosition) {
  auto model = make_gpt(tiny_options());
  randomize(*model, 4);
  torch::NoGradGuard no_grad;
  const int64_t length = 5, padded_length = 16;
  const auto row = random_tokens(1, length, 5);
  const auto cut = model->forward(row);
  ASSERT_EQ(cut.sizes().vec(), (std::vector<int64_t>{1, length, 256}));
  for (int64_t pad_id : {0, 7, 255}) {  // any id: the trainer uses 0
    const auto padded = torch::cat({row, torch::full({1, padded_length - length}, pad_id, torch::kLong)}, 1);
    const auto logits = model->forward(padded);
    EXPECT_LE(relative_difference(logits.narrow(1, 0, length), cut), 1e-6) << "padded with " << pad_id;
  }
  // A row's logits do not depend on the other rows of its micro-batch either.
  const auto batch = torch::cat({random_tokens(1, padded_length, 6),
                                 torch::cat({row, torch::zeros({1, padded_length - length}, torch::kLong)}, 1),
                                 random_tokens(1, padded_length, 7)});
  EXPECT_LE(relative_difference(model->forward(batch)[1].narrow(0, 0, length), cut[0]), 1e-6);
}

TEST(Gpt, RefusesBadOptionsAndInputsInOneLine) {
  GptOptions options = tiny_options();
  options.n_embd = 10;
  options.n_head = 3;
  try {
    make_gpt(options);
    ADD_FAILURE() << "accepted --n-embd 10 with --n-head 3";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()),
              "--n-embd 10 is not divisible by --n-head 3; choose an --n-embd that is a multiple of --n-head");
  }
  options = tiny_options();
  options.n_layer = 0;
  EXPECT_THROW(make_gpt(options), UsageError);

  auto model = make_gpt(tiny_options());
  auto message_of = [&](const at::Tensor& tokens) {
    try {
      model->forward(tokens);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of(torch::zeros({2, 17}, torch::kLong)).find("17 tokens does not fit the GPT's block size 16"),
            std::string::npos)
      << message_of(torch::zeros({2, 17}, torch::kLong));
  EXPECT_NE(message_of(torch::full({2, 4}, 256, torch::kLong)).find("token id 256 is outside"), std::string::npos);
  EXPECT_NE(message_of(torch::full({2, 4}, -1, torch::kLong)).find("token id -1 is outside"), std::string::npos);
  EXPECT_NE(message_of(torch::zeros({2, 4}, torch::kInt)).find("int64 tokens [N, T]"), std::string::npos);
  EXPECT_NE(message_of(torch::zeros({4}, torch::kLong)).find("int64 tokens [N, T]"), std::string::npos);
  for (const auto& tokens : {torch::zeros({2, 17}, torch::kLong), torch::full({1, 1}, 300, torch::kLong)}) {
    EXPECT_EQ(message_of(tokens).find('\n'), std::string::npos);
  }
}

TEST(Gpt, LearnsARepeatedStringWithPaddedTargetsIgnored) {
  torch::manual_seed(8);
  auto model = make_gpt(tiny_options());
  const std::string text = "abcabcabcab";
  auto inputs = torch::zeros({1, 16}, torch::kLong);
  auto targets = torch::full({1, 16}, -1, torch::kLong);
  for (size_t t = 0; t + 1 < text.size(); ++t) {
    inputs[0][t] = static_cast<int64_t>(text[t]);
    targets[0][t] = static_cast<int64_t>(text[t + 1]);
  }
  torch::optim::Adam optimizer(trainable_parameters(*model), torch::optim::AdamOptions(1e-2));
  auto loss_of = [&] {
    return torch::nn::functional::cross_entropy(model->forward(inputs).view({-1, 256}), targets.view({-1}),
                                                torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
  };
  const double first = loss_of().item<double>();
  EXPECT_NEAR(first, std::log(256.0), 0.3);  // about uniform at initialization
  for (int step = 0; step < 60; ++step) {
    optimizer.zero_grad();
    auto loss = loss_of();
    loss.backward();
    optimizer.step();
  }
  EXPECT_LT(loss_of().item<double>(), 0.1);
  auto named = model->named_parameters();
  EXPECT_TRUE(named["lm_head.weight"].is_same(named["wte.weight"])) << "training untied the head";
}

// ---- PyTorch interop -----------------------------------------------------------

class GptInterop : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system((std::string(kPython) + " -c 'import torch' >/dev/null 2>&1").c_str()) != 0) {
      DTRAIN_SKIP_OUTSIDE_CI(std::string(kPython) + " cannot import torch (apt-get install python3-torch), which "
                             "the comparison with tests/models/gpt_reference.py needs");
    }
    dir_ = fs::temp_directory_path() / ("dtrain_gpt_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // TOKENS for the script: the batch and the model's sizes.
  void write_tokens(const at::Tensor& tokens, const GptOptions& o) {
    save_weights({{"tokens", tokens},
                  {"config", torch::tensor({o.vocab_size, o.block_size, o.n_layer, o.n_head, o.n_embd}, torch::kLong)}},
                 path("tokens.pt"));
  }
  void run_reference(const std::string& extra) {
    const std::string command = std::string(kPython) + " '" + DTRAIN_SOURCE_DIR + "/tests/models/gpt_reference.py' " +
                                extra + " '" + path("weights.pt") + "' '" + path("tokens.pt") + "' '" +
                                path("logits.pt") + "'";
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
  }
  // The script's logits, after checking it read `tokens`.
  at::Tensor reference_logits(const at::Tensor& tokens) {
    std::map<std::string, at::Tensor> out;
    for (auto& [name, value] : read_weights(path("logits.pt"))) out[name] = value;
    if (!out.count("logits") || !out.count("tokens") || !torch::equal(out["tokens"], tokens)) {
      ADD_FAILURE() << path("logits.pt") << " lacks the logits, or of other tokens";
      return torch::zeros({0});
    }
    return out["logits"];
  }
  fs::path dir_;
};

GptOptions interop_options() { return small_options(24, 4, 32); }

TEST_F(GptInterop, ExportedWeightsGiveTheSameLogitsInPyTorch) {
  const GptOptions options = interop_options();
  auto model = make_gpt(options);
  randomize(*model, 9);
  const auto tokens = random_tokens(3, 20, 10);  // shorter than the block: positions 0..19 of wpe
  write_tokens(tokens, options);
  save_weights(model_state(*model), path("weights.pt"));
  run_reference("");
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(tokens);
  const auto reference = reference_logits(tokens);
  ASSERT_EQ(reference.sizes().vec(), logits.sizes().vec());
  EXPECT_GT(max_abs(logits), 1.0);  // the comparison is not of near-zeros
  EXPECT_LE(relative_difference(logits, reference), 1e-5);
  std::cout << "[ GPT      ] dtrain -> PyTorch: max |logit| " << max_abs(logits) << ", relative difference "
            << relative_difference(logits, reference) << "\n";
}

TEST_F(GptInterop, APyTorchStateDictLoadsAndGivesPyTorchsLogits) {
  const GptOptions options = interop_options();
  const auto tokens = random_tokens(2, 24, 11);
  write_tokens(tokens, options);
  run_reference("--save-seeded 12");  // torch.save(model.state_dict(), weights.pt)

  const NamedTensors state = read_weights(path("weights.pt"));
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  ASSERT_EQ(state.size(), documented_parameters(options).size()) << "both names of the tied weight are in the file";
  EXPECT_TRUE(torch::equal(by_name.at("wte.weight"), by_name.at("lm_head.weight")));

  torch::manual_seed(13);
  auto model = make_gpt(options);
  load_into(*model, state, path("weights.pt"));
  auto named = model->named_parameters();
  EXPECT_TRUE(named["lm_head.weight"].is_same(named["wte.weight"])) << "loading untied the head";
  EXPECT_TRUE(torch::equal(named["h.1.mlp.c_proj.bias"], by_name.at("h.1.mlp.c_proj.bias")));
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(tokens);
  const auto reference = reference_logits(tokens);
  EXPECT_GT(max_abs(logits), 1.0);
  EXPECT_LE(relative_difference(logits, reference), 1e-5);
  std::cout << "[ GPT      ] PyTorch -> dtrain: max |logit| " << max_abs(logits) << ", relative difference "
            << relative_difference(logits, reference) << "\n";
}

}  // namespace
}  // namespace dtrain
