// A checkpoint's files in memory: verified against the manifest and parsed
// (run/checkpoint.h reads them from a folder; the fuzz harness hands them
// in directly), and the check that a resume keeps the trajectory.
#pragma once
#include "cli/config.h"
#include "run/checkpoint.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <optional>
#include <string>

namespace dtrain {

// The hash checkpoints are written with, as the manifest names it ("hash",
// and each file's key). Manifests that name none hash with "sha256".
constexpr const char* kCheckpointHash = "xxh3-128";

// A checkpoint file's bytes by name (manifest.json, model.pt, optimizer.pt,
// trainer.json), or nullopt when it cannot be read. Asked for manifest.json
// first, then for each other file only once the manifest lists it.
using CheckpointFileReader = std::function<std::optional<std::string>(const std::string& name)>;

// Verifies the manifest (every file's size and hash: XXH3-128, or SHA-256
// in manifests that name no hash), then parses. Throws Error naming `path`,
// the file and the failed check.
Checkpoint parse_checkpoint(const CheckpointFileReader& read, const std::string& path);

// The same over files in memory (name -> bytes; a missing one absent).
using CheckpointFiles = std::map<std::string, std::string>;
Checkpoint parse_checkpoint(const CheckpointFiles& files, const std::string& path);

// Refuses (UsageError, one line) a resume whose settings would change the
// trajectory: each differing option of effect class exact as "--name old ->
// new". The batch split (micro-batch, accumulation, world size) and options
// of class rounding or none may change. --epochs may change when the LR
// schedule does not depend on it (constant or step).
void check_resume_compatible(const nlohmann::json& trainer_state, const Config& resolved, const std::string& source);

}  // namespace dtrain
