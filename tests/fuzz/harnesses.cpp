#include "harnesses.h"

#include "cli/option_table.h"
#include "cli/options.h"
#include "common/error.h"
#include "data/idx_reader.h"
#include "io/files.h"
#include "io/weights.h"
#include "run/checkpoint_files.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>

namespace dtrain::fuzz {

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz: %s: %.300s\n", what, detail.c_str());
  std::abort();
}

// The one clean line a user would see: printable, short, and more than an
// exception's or a library function's name ("std::bad_alloc",
// "basic_string::_M_create", "stoll"). The harnesses' messages start with
// an option or a file name.
void check_message(const std::string& message) {
  bool clean = !message.empty() && message.size() <= 500;
  for (unsigned char byte : message) clean = clean && byte >= 0x20 && byte < 0x7f;
  for (const char* bare : {"std::", "basic_string::", "vector::", "map::", "sto"}) {
    clean = clean && message.rfind(bare, 0) != 0;
  }
  if (!clean) finding("unclean error message", message);
}

}  // namespace

void idx(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const int rank = (data[0] & 1) ? 3 : 1;
  try {
    const IdxArray array = parse_idx(data + 1, size - 1, "fuzz.idx", rank);
    size_t total = 1;
    for (int64_t dim : array.dims) total *= static_cast<size_t>(dim);
    if (total != array.data.size()) finding("data size differs from the claim", std::to_string(array.data.size()));
  } catch (const Error& e) {
    check_message(e.what());
  }
}

void config(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  ParsedOptions parsed;
  try {
    parsed = parse_config_text(text, "fuzz.ini");
  } catch (const Error& e) {
    check_message(e.what());
    return;
  }
  // A configuration that parses survives --dump-config unchanged.
  const std::string dumped = dump_config(parsed);
  ParsedOptions again;
  try {
    again = parse_config_text(dumped, "dump.ini");
  } catch (const Error& e) {
    finding("the dump of a valid config does not parse", e.what());
  }
  if (config_to_json(again.config) != config_to_json(parsed.config) ||
      launch_hash(again.config) != launch_hash(parsed.config)) {
    finding("the dump of a valid config reads back differently", dumped);
  }
}

void option_values(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const auto& table = option_table();
  const OptionSpec& spec = table[data[0] % table.size()];
  const std::string value(reinterpret_cast<const char*>(data + 1), size - 1);
  Config config;
  try {
    config = parse_options({"--" + spec.name, value}).config;
  } catch (const Error& e) {
    check_message(e.what());
    return;
  }
  // A value that parses reads back as itself.
  const std::string text = spec.text(config);
  Config again;
  try {
    again = parse_options({"--" + spec.name, text}).config;
  } catch (const Error& e) {
    finding("an option's own text does not parse", "--" + spec.name + " " + text + ": " + e.what());
  }
  if (spec.text(again) != text || config_to_json(again) != config_to_json(config)) {
    finding("an option's text reads back differently", "--" + spec.name + " " + text);
  }
}

void weights(const uint8_t* data, size_t size) {
  try {
    parse_weights(data, size, "fuzz.pt");
  } catch (const Error& e) {
    check_message(e.what());
  }
}

namespace {

// A checkpoint's fixed, valid files, for the checkpoint harness.
struct CheckpointFixture {
  std::string model;
  std::string optimizer;
  std::string trainer = "{\"step\": 3, \"options\": {}, \"world_size\": 1}";
  CheckpointFixture() {
    const auto model_bytes = serialize_weights({{"w", torch::arange(4, torch::kFloat)}});
    const auto optimizer_bytes = serialize_weights({{"w.momentum_buffer", torch::ones({4})}});
    model.assign(model_bytes.begin(), model_bytes.end());
    optimizer.assign(optimizer_bytes.begin(), optimizer_bytes.end());
  }
};

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
}

}  // namespace

void checkpoint(const uint8_t* data, size_t size) {
  if (size == 0) return;
  static const CheckpointFixture fixture;
  std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  CheckpointFiles files = {{"model.pt", fixture.model}, {"optimizer.pt", fixture.optimizer}};
  const bool fuzz_manifest = (data[0] & 1) == 0;
  if (fuzz_manifest) {
    // "$model", "$optimizer", "$trainer" stand for those files' XXH3-128,
    // "$sha:model" and so on for their SHA-256, "$size:model" for their
    // sizes: a fuzzed manifest can pass the checks and reach what follows.
    for (const auto& [name, key] : {std::pair<std::string, std::string>{"model.pt", "model"},
                                    {"optimizer.pt", "optimizer"}, {"trainer.json", "trainer"}}) {
      const std::string& content = name == "trainer.json" ? fixture.trainer : files[name];
      replace_all(text, "$size:" + key, std::to_string(content.size()));
      replace_all(text, "$sha:" + key, sha256_hex(content));
      replace_all(text, "$" + key, xxh3_128_hex(content));
    }
    files["manifest.json"] = text;
    files["trainer.json"] = fixture.trainer;
  } else {
    // trainer.json under a manifest that matches it.
    files["trainer.json"] = text;
    nlohmann::json manifest = {{"format", kCheckpointFormat}, {"step", 3}, {"hash", "xxh3-128"}, {"files", nlohmann::json::object()}};
    for (const auto& [name, content] : files) {
      manifest["files"][name] = {{"bytes", content.size()}, {"xxh3-128", xxh3_128_hex(content)}};
    }
    files["manifest.json"] = manifest.dump();
  }
  Checkpoint read;
  try {
    read = parse_checkpoint(files, "fuzz-checkpoint");
  } catch (const Error& e) {
    check_message(e.what());
    return;
  }
  // Whatever verifies reads back as the fixture's weights.
  if (read.model.size() != 1 || read.model[0].first != "w" ||
      !torch::equal(read.model[0].second, torch::arange(4, torch::kFloat))) {
    finding("a verified checkpoint's model.pt reads back differently", text);
  }
  if (fuzz_manifest) return;
  try {
    check_resume_compatible(read.trainer, Config{}, "fuzz-checkpoint");
  } catch (const Error& e) {
    check_message(e.what());
  }
}

}  // namespace dtrain::fuzz
