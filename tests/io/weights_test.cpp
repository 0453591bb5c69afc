#include "io/weights.h"

#include "cli/config.h"
#include "common/error.h"
#include "io/files.h"
#include "models/models.h"

#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

namespace dtrain {
namespace {

namespace fs = std::filesystem;

}  // namespace

std::string shape_of_for_test(const torch::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

namespace {

class Weights : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dtrain_weights_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

std::shared_ptr<Model> mlp(std::vector<int64_t> hidden, uint64_t seed) {
  torch::manual_seed(seed);
  ModelOptions options;
  options.hidden = std::move(hidden);
  return make_model(options, {1, 28, 28}, 10);
}

TEST_F(Weights, ExportThenLoadRestoresEveryTensorExactly) {
  auto source = mlp({32, 16}, 1);
  auto target = mlp({32, 16}, 2);
  save_weights(model_state(*source), path("w.pt"));
  const NamedTensors read = read_weights(path("w.pt"));
  ASSERT_EQ(read.size(), 6u);
  EXPECT_EQ(read[0].first, "hidden.0.weight");
  EXPECT_EQ(read.back().first, "head.bias");
  load_into(*target, read, "w.pt");
  const auto a = model_state(*source);
  const auto b = model_state(*target);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  EXPECT_FALSE(fs::exists(path("w.pt.tmp")));
}

TEST_F(Weights, TheDirectWriterWritesWhatPickleSaveWouldRead) {
  auto source = mlp({32, 16}, 3);
  NamedTensors tensors = model_state(*source);
  tensors.emplace_back("counter", torch::tensor(int64_t{7}));
  tensors.emplace_back("empty", torch::empty({0}));
  const WrittenFile written = write_weights_file(tensors, path("direct.pt"));
  const std::string bytes = read_file(path("direct.pt"));
  EXPECT_EQ(written.bytes, bytes.size());
  EXPECT_EQ(written.xxh3_128, xxh3_128_hex(bytes));
  const NamedTensors read = read_weights(path("direct.pt"));  // LibTorch's zip reader and unpickler, checked
  ASSERT_EQ(read.size(), tensors.size());
  for (size_t i = 0; i < read.size(); ++i) {
    EXPECT_EQ(read[i].first, tensors[i].first);
    EXPECT_TRUE(torch::equal(read[i].second, tensors[i].second)) << read[i].first;
    EXPECT_EQ(read[i].second.dtype(), tensors[i].second.dtype()) << read[i].first;
  }
}

TEST_F(Weights, ManyTensorsTakeLibTorchsZip64Writer) {
  // 65535 records or more do not fit a plain zip's directory: that file goes
  // through LibTorch's writer (with the same untagged pickle) and reads back.
  NamedTensors many;
  for (int i = 0; i < 66000; ++i) many.emplace_back("t" + std::to_string(i), torch::full({1}, static_cast<float>(i)));
  const WrittenFile written = write_weights_file(many, path("many.pt"));
  EXPECT_EQ(written.xxh3_128, xxh3_128_hex(read_file(path("many.pt"))));
  const NamedTensors read = read_weights(path("many.pt"));
  ASSERT_EQ(read.size(), many.size());
  EXPECT_EQ(read.back().first, "t65999");
  EXPECT_EQ(read.back().second.item<float>(), 65999.0f);
}

TEST_F(Weights, MismatchesAreListedInOneLine) {
  save_weights(model_state(*mlp({32, 16}, 1)), path("w.pt"));
  auto other = mlp({32, 8}, 1);
  try {
    load_into(*other, read_weights(path("w.pt")), "w.pt");
    ADD_FAILURE() << "shape mismatch accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("hidden.1.weight is [16, 32] in the file but [8, 32] in the model"), std::string::npos)
        << message;
    EXPECT_EQ(message.find('\n'), std::string::npos);
  }
  auto deeper = mlp({32, 16, 8}, 1);
  try {
    load_into(*deeper, read_weights(path("w.pt")), "w.pt");
    ADD_FAILURE() << "missing tensor accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing hidden.2.weight"), std::string::npos) << e.what();
  }
}

TEST_F(Weights, UnreadableFilesGiveOneLineWithTheFix) {
  EXPECT_THROW(read_weights(path("absent.pt")), Error);
  {
    std::ofstream junk(path("junk.pt"));
    junk << "this is not a zip file";
  }
  try {
    read_weights(path("junk.pt"));
    ADD_FAILURE() << "junk accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("torch.save({k: v for k, v in model.state_dict().items()}, PATH)"), std::string::npos)
        << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  // A pickle of something other than a dict of tensors.
  const auto bytes = torch::pickle_save(c10::IValue(int64_t{42}));
  {
    std::ofstream out(path("int.pt"), std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  EXPECT_THROW(read_weights(path("int.pt")), Error);
}

// A zip as torch.save writes it, holding `pickle` as its data.pkl.
std::string archive_holding(const std::string& pickle) {
  std::string archive;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
    archive.append(static_cast<const char*>(data), size);
    return size;
  });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeEndOfFile();
  return archive;
}

std::string parse_error(const std::string& pickle) {
  const std::string archive = archive_holding(pickle);
  try {
    parse_weights(reinterpret_cast<const uint8_t*>(archive.data()), archive.size(), "w.pt");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

// Pickles that LibTorch 1.13's unpickler would run out of bounds on, leak as
// a reference cycle or overflow the stack destroying: each is refused by the
// walk over the opcodes' stack effects before the unpickler sees it.
TEST(WeightsPickle, UnsoundStackEffectsAreRefusedInOneLine) {
  using namespace std::string_literals;  // the pickles hold zero bytes
  const std::string proto = "\x80\x02"s;
  // Containers nested `depth` deep, built with APPENDS.
  auto nested = [](int depth) {
    std::string pickle = "]";
    for (int i = 1; i < depth; ++i) pickle = "](" + pickle + "e";
    return pickle;
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {proto + "R.", "pops more values than the stack holds"},
      {proto + "K\x01(0.", "pops more values than the stack holds"},  // POP across a MARK
      {proto + "]e.", "needs a MARK that is not there"},
      {proto + "(e.", "fills a container the stack does not hold"},
      {proto + "]q\x00(h\x00" "e."s, "puts a container into itself"},
      {proto + "]q\x00](h\x00" "eh\x00(K\x01" "e."s, "changes a container after putting it into another"},
      {proto + nested(101) + ".", "nest more than 100 deep"},
      {proto + "h\x01K\x01K\x01.", "reads a memo entry it never wrote"},
      {proto + ".", "ends with 0 values and 0 marks"},
      {proto + "K\x01K\x02.", "ends with 2 values"},
      {proto + "(K\x01.", "ends with 1 values and 1 marks"},
  };
  for (const auto& [pickle, expected] : cases) {
    const std::string message = parse_error(pickle);
    EXPECT_NE(message.find(expected), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  // Sound pickles pass the walk and fail (if at all) on what they hold.
  const std::string deep = parse_error(proto + nested(100) + ".");
  EXPECT_NE(deep.find("does not hold a dict of name -> tensor"), std::string::npos) << deep;
  const std::string shared = parse_error(proto + "(]q\x00h\x00t."s);  // one list twice in a tuple
  EXPECT_NE(shared.find("does not hold a dict of name -> tensor"), std::string::npos) << shared;
}

TEST_F(Weights, UnwritableExportFailsWithoutDamage) {
  EXPECT_THROW(save_weights(model_state(*mlp({8}, 1)), path("no/such/dir/w.pt")), Error);
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

TEST(Models, CnnHasTheDocumentedNamesAndShapes) {
  torch::manual_seed(0);
  ModelOptions options;
  options.kind = ModelKind::Cnn;
  auto cnn = make_model(options, {1, 28, 28}, 10);
  std::vector<std::string> names;
  for (const auto& [name, tensor] : model_state(*cnn)) names.push_back(name + " " + shape_of_for_test(tensor));
  EXPECT_EQ(names, (std::vector<std::string>{"conv1.weight [32, 1, 3, 3]", "conv1.bias [32]", "conv2.weight [64, 32, 3, 3]",
                                             "conv2.bias [64]", "fc.weight [128, 3136]", "fc.bias [128]",
                                             "head.weight [10, 128]", "head.bias [10]"}));
  EXPECT_EQ(cnn->forward(torch::randn({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_THROW(make_model(options, {1, 30, 30}, 10), Error);
}

}  // namespace
}  // namespace dtrain
