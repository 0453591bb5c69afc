// Checkpoints: everything a run needs to continue exactly (docs/checkpoints.md).
// One folder per checkpoint, CHECKPOINT_DIR/step-NNNNNNNN/:
//   model.pt       parameters and buffers, names as --export (torch.load reads it)
//   optimizer.pt   per-parameter optimizer state (optim/optimizer.h; torch.load reads it)
//   trainer.json   step, position in the data, loss accumulators, RNG states,
//                  the resolved configuration and its trajectory hash, format
//   manifest.json  every file with its size and XXH3-128 (named by "hash";
//                  SHA-256 where it names none, as before 2026-12), written last
// A checkpoint is written as step-N.tmp/ (each file fsynced), renamed into
// place, the parent fsynced; only then are checkpoints beyond --keep-checkpoints
// deleted. A reader verifies the manifest before it uses anything, and never
// reads a .tmp folder.
#pragma once
#include "cli/config.h"
#include "comm/communicator.h"
#include "io/weights.h"

#include <ATen/core/Generator.h>
#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dtrain {

constexpr int kCheckpointFormat = 1;

// Every random generator training uses, whose states a checkpoint keeps:
// the CPU's, and the GPU's when training on one.
std::vector<at::Generator> rng_generators(const c10::Device& device);

struct Checkpoint {
  NamedTensors model;
  NamedTensors optimizer;
  nlohmann::json trainer;  // trainer.json
};

// --checkpoint-dir, or OUT_DIR/checkpoints.
std::string checkpoint_dir(const Config& config);

// "step-00000100"
std::string checkpoint_name(int64_t step);

struct WrittenCheckpoint {
  std::string path;
  int64_t bytes = 0;
  double seconds = 0;
};

// Writes `checkpoint` as DIR/step-N (see above) and keeps the newest `keep`.
// Throws Error naming the path and the OS's reason; earlier checkpoints are
// untouched by a failed write.
WrittenCheckpoint write_checkpoint(const std::string& dir, int64_t step, const Checkpoint& checkpoint, int64_t keep);

// Verifies the manifest (every file's size and hash), then reads
// (parse_checkpoint of run/checkpoint_files.h).
// Throws Error naming the file and the failed check.
Checkpoint read_checkpoint(const std::string& path);

// The step-N folders in `dir` (complete ones, not .tmp), newest first.
// Empty when `dir` does not exist; Error when it is not a folder.
std::vector<std::string> list_checkpoints(const std::string& dir);

// Removes leftover step-N.tmp folders of interrupted writes; returns how many.
int remove_unfinished_checkpoints(const std::string& dir);

// The newest checkpoint in `dir` that verifies; each one skipped is passed to
// `warn` with the reason. nullopt when there is none.
struct FoundCheckpoint {
  std::string path;
  Checkpoint checkpoint;
};
std::optional<FoundCheckpoint> newest_valid_checkpoint(const std::string& dir,
                                                       const std::function<void(const std::string&)>& warn);

// Resolves --resume (on one rank): "" to start fresh, or the checkpoint
// folder to continue from. never: UsageError if the checkpoint dir already
// holds checkpoints; auto: the newest valid one (each damaged one skipped is
// passed to `warn`), leftover .tmp folders removed, "" and a note to `warn`
// when there is none; otherwise the given path.
std::string choose_resume(const Config& config, const std::function<void(const std::string&)>& warn);

// The step of a step-N folder path, or -1.
int64_t checkpoint_step(const std::string& path);

// check_resume_compatible and the in-memory reader: run/checkpoint_files.h.

// Whether every rank holds the same tensors. replica_checksums is local (it
// may throw: run it under run_agreed); compare_replicas is collective (one
// all-gather of a checksum per rank; more only on a mismatch, on every rank
// alike) and returns "" or the error naming the first tensor that differs
// and a rank that holds another value.
std::vector<uint64_t> replica_checksums(const NamedTensors& tensors);
std::string compare_replicas(Communicator& comm, const NamedTensors& tensors, const std::vector<uint64_t>& sums,
                             int64_t step);

}  // namespace dtrain
