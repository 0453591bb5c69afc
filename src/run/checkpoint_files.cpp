// Reading a checkpoint's files: the manifest verified, then the weights and
// trainer.json parsed; and whether a resume may continue from it.
#include "run/checkpoint_files.h"

#include "cli/option_table.h"
#include "common/error.h"
#include "io/files.h"

#include <algorithm>
#include <vector>

namespace dtrain {

namespace {

const std::vector<std::string> kFiles = {"model.pt", "optimizer.pt", "trainer.json"};
const char* const kHashSha256 = "sha256";

}  // namespace

Checkpoint parse_checkpoint(const CheckpointFileReader& read, const std::string& path) {
  auto bad = [&](const std::string& file, const std::string& check) {
    return Error("checkpoint " + path + " is damaged: " + file + " " + check +
                 "; resume from an older checkpoint (--resume auto skips damaged ones)");
  };
  auto content_of = [&](const std::string& name) {
    std::optional<std::string> content = read(name);
    if (!content) throw bad(name, "is missing or unreadable");
    return std::move(*content);
  };
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(content_of("manifest.json"));
  } catch (const nlohmann::json::exception&) {
    throw bad("manifest.json", "is not valid JSON");
  }
  if (!manifest.is_object() || !manifest.contains("format") || !manifest["format"].is_number_integer() ||
      !manifest.contains("files") || !manifest["files"].is_object()) {
    throw bad("manifest.json", "lacks its format or file list");
  }
  if (manifest["format"].get<int64_t>() != kCheckpointFormat) {
    throw Error("checkpoint " + path + " has format " + manifest["format"].dump() + ", this dtrain reads format " +
                std::to_string(kCheckpointFormat) + "; resume it with the dtrain version that wrote it");
  }
  // The files' hash: named by "hash", SHA-256 where the manifest names none.
  std::string hash = kHashSha256;
  if (manifest.contains("hash")) {
    if (!manifest["hash"].is_string() ||
        (manifest["hash"].get<std::string>() != kCheckpointHash && manifest["hash"].get<std::string>() != kHashSha256)) {
      throw bad("manifest.json", "names the hash " + printable_excerpt(manifest["hash"].dump()) +
                                     ", this dtrain knows " + kCheckpointHash + " and " + kHashSha256);
    }
    hash = manifest["hash"].get<std::string>();
  }
  std::map<std::string, std::string> bytes;
  for (const auto& name : kFiles) {
    const auto& listed = manifest["files"];
    if (!listed.contains(name) || !listed[name].is_object() || !listed[name].contains("bytes") ||
        !listed[name].contains(hash) || !listed[name]["bytes"].is_number_unsigned() || !listed[name][hash].is_string()) {
      throw bad("manifest.json", "does not list " + name);
    }
    std::string content = content_of(name);
    if (content.size() != listed[name]["bytes"].get<uint64_t>()) {
      throw bad(name, "has " + std::to_string(content.size()) + " bytes, the manifest says " +
                          listed[name]["bytes"].dump() + " (truncated?)");
    }
    const std::string digest = hash == kCheckpointHash ? xxh3_128_hex(content) : sha256_hex(content);
    if (digest != listed[name][hash].get<std::string>()) {
      throw bad(name, "fails its " + std::string(hash == kCheckpointHash ? "XXH3-128" : "SHA-256") +
                          " check (damaged on disk)");
    }
    bytes[name] = std::move(content);
  }
  Checkpoint checkpoint;
  auto parse = [&](const std::string& name) {
    const std::string& content = bytes[name];
    return parse_weights(reinterpret_cast<const uint8_t*>(content.data()), content.size(), path + "/" + name);
  };
  checkpoint.model = parse("model.pt");
  checkpoint.optimizer = parse("optimizer.pt");
  try {
    checkpoint.trainer = nlohmann::json::parse(bytes["trainer.json"]);
  } catch (const nlohmann::json::exception&) {
    throw bad("trainer.json", "is not valid JSON");
  }
  for (const char* key : {"step", "options", "world_size"}) {
    if (!checkpoint.trainer.is_object() || !checkpoint.trainer.contains(key)) {
      throw bad("trainer.json", std::string("lacks \"") + key + "\"");
    }
  }
  if (!checkpoint.trainer["options"].is_object()) throw bad("trainer.json", "has \"options\" that are not an object");
  return checkpoint;
}

Checkpoint parse_checkpoint(const CheckpointFiles& files, const std::string& path) {
  return parse_checkpoint(
      [&files](const std::string& name) -> std::optional<std::string> {
        const auto found = files.find(name);
        if (found == files.end()) return std::nullopt;
        return found->second;
      },
      path);
}

void check_resume_compatible(const nlohmann::json& trainer_state, const Config& resolved, const std::string& source) {
  const nlohmann::json& saved = trainer_state.at("options");
  const bool horizon_free =
      resolved.lr.schedule == LrScheduleKind::Constant || resolved.lr.schedule == LrScheduleKind::Step;
  std::vector<std::string> changes;
  const Config defaults;
  for (const auto& spec : option_table()) {
    if (spec.effect != Effect::Exact) continue;
    if (spec.name == "epochs" && horizon_free) continue;  // only where the run stops
    if (spec.name == "init-from") continue;               // the checkpoint's weights replace it
    const std::string now = spec.text(resolved);
    // An option newer than the checkpoint had its default then.
    const std::string then = !saved.contains(spec.name) ? spec.text(defaults)
                             : saved[spec.name].is_string() ? saved[spec.name].get<std::string>()
                                                            : saved[spec.name].dump();
    if (now != then) {
      changes.push_back("--" + spec.name + " " + (then.empty() ? "(unset)" : printable_excerpt(then, 24)) + " -> " +
                        (now.empty() ? "(unset)" : printable_excerpt(now, 24)));
    }
  }
  if (!changes.empty()) {
    // One line of bounded length: the first few changes, and how many more.
    constexpr size_t kListed = 4;
    constexpr size_t kListChars = 240;
    std::string list;
    for (size_t i = 0; i < std::min(changes.size(), kListed); ++i) list += (i ? ", " : "") + changes[i];
    if (list.size() > kListChars) list = list.substr(0, kListChars) + "...";
    if (changes.size() > kListed) list += " and " + std::to_string(changes.size() - kListed) + " more";
    throw UsageError("cannot resume from " + source + ": these settings change the training trajectory: " + list +
                     "; resume with the checkpoint's settings (its trainer.json lists them) or start a new run "
                     "with another --checkpoint-dir");
  }
}

}  // namespace dtrain
