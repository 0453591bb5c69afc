// Writing a checkpoint folder atomically with its manifest and checksums,
// reading and verifying one, and choosing where a run resumes.
#include "run/checkpoint.h"

#include "common/error.h"
#include "io/files.h"
#include "run/checkpoint_files.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <future>
#include <map>

namespace dtrain {

namespace fs = std::filesystem;

namespace {

// The step of a folder named step-NNNNNNNN, or -1.
int64_t step_of(const std::string& name) {
  if (name.size() < 13 || name.size() > 23 || name.compare(0, 5, "step-") != 0) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

void make_folder(const std::string& dir) {
  std::error_code error;
  if (fs::exists(dir, error) && !fs::is_directory(dir, error)) {
    throw Error("--checkpoint-dir " + dir + " is a file, not a folder; give a folder path");
  }
  fs::create_directories(dir, error);
  if (error) throw Error("cannot create --checkpoint-dir " + dir + ": " + error.message());
}

void remove_all_quietly(const std::string& path) {
  std::error_code ignored;
  fs::remove_all(path, ignored);
}

}  // namespace

std::string checkpoint_dir(const Config& config) {
  return config.checkpoint.dir.empty() ? config.run.out_dir + "/checkpoints" : config.checkpoint.dir;
}

namespace {
// FNV-1a over a tensor's bytes (on the CPU), a 64-bit word at a time.
uint64_t checksum(const at::Tensor& tensor, uint64_t hash = 1469598103934665603ull) {
  const at::Tensor bytes = tensor.detach().cpu().contiguous();
  const auto* data = static_cast<const uint8_t*>(bytes.data_ptr());
  const size_t size = static_cast<size_t>(bytes.numel()) * bytes.element_size();
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t word;
    std::memcpy(&word, data + i, 8);
    hash = (hash ^ word) * 1099511628211ull;
  }
  for (; i < size; ++i) hash = (hash ^ data[i]) * 1099511628211ull;
  return hash;
}
}  // namespace

std::vector<uint64_t> replica_checksums(const NamedTensors& tensors) {
  std::vector<uint64_t> sums;
  for (const auto& item : tensors) sums.push_back(checksum(item.second));
  return sums;
}

std::string compare_replicas(Communicator& comm, const NamedTensors& tensors, const std::vector<uint64_t>& sums,
                             int64_t step) {
  if (comm.world_size() == 1) return "";
  uint64_t all = 1469598103934665603ull;
  for (uint64_t sum : sums) all = (all ^ sum) * 1099511628211ull;
  const auto totals = comm.all_gather(static_cast<int64_t>(all));
  if (std::all_of(totals.begin(), totals.end(), [&](int64_t t) { return t == totals[0]; })) return "";
  // Rare: find the first tensor that differs (one all-gather per tensor; every
  // rank takes this branch, as every rank saw the same totals).
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto each = comm.all_gather(static_cast<int64_t>(sums[i]));
    for (size_t rank = 1; rank < each.size(); ++rank) {
      if (each[rank] != each[0]) {
        return "at step " + std::to_string(step) + " the ranks' parameters differ: " + tensors[i].first + " on rank " +
               std::to_string(rank) + " differs from rank 0 (replicas drifted apart: a nondeterministic kernel or a "
               "corrupted all-reduce); no checkpoint written, resume from the last one";
      }
    }
  }
  return "at step " + std::to_string(step) + " the ranks' parameters differ; no checkpoint written";
}

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  return name;
}

WrittenCheckpoint write_checkpoint(const std::string& dir, int64_t step, const Checkpoint& checkpoint, int64_t keep) {
  const auto start = std::chrono::steady_clock::now();
  make_folder(dir);
  const std::string final_path = dir + "/" + checkpoint_name(step);
  const std::string temporary = final_path + ".tmp";
  remove_all_quietly(temporary);
  std::error_code error;
  fs::create_directory(temporary, error);
  if (error) throw Error("cannot create checkpoint folder " + temporary + ": " + error.message());

  WrittenCheckpoint written;
  // "hash" names the files' hash; manifests without it (dtrain before
  // 2026-12) hash with SHA-256, and stay readable.
  nlohmann::json manifest = {
      {"format", kCheckpointFormat}, {"step", step}, {"hash", kCheckpointHash}, {"files", nlohmann::json::object()}};
  // Each file: serialized, hashed, written and fsynced; the two tensor files
  // in parallel (they are the bulk, and a rank has a core to spare here).
  struct Entry {
    std::string name;
    size_t size = 0;
    std::string hash;  // XXH3-128
  };
  auto put = [&temporary](const std::string& name, const void* bytes, size_t size) {
    write_file_synced(temporary + "/" + name, bytes, size);
    return Entry{name, size, xxh3_128_hex(bytes, size)};
  };
  auto put_tensors = [&temporary](const std::string& name, const NamedTensors& tensors) {
    const WrittenFile file = write_weights_file(tensors, temporary + "/" + name);
    return Entry{name, file.bytes, file.xxh3_128};
  };
  std::vector<Entry> entries;
  try {
    auto model = std::async(std::launch::async, put_tensors, "model.pt", std::cref(checkpoint.model));
    std::exception_ptr failure;
    try {
      entries.push_back(put_tensors("optimizer.pt", checkpoint.optimizer));
    } catch (...) {
      failure = std::current_exception();
    }
    entries.push_back(model.get());  // waits, and rethrows its failure
    if (failure) std::rethrow_exception(failure);
    // Test hook (tests/e2e/checkpoint.sh): a second preemption signal lands
    // inside the write, between the tensor files and the rest.
    if (const char* fault = std::getenv("DTRAIN_FAULT_SIGNAL_IN_CHECKPOINT"); fault && std::string(fault) == "1") {
      std::raise(SIGUSR1);
      std::fprintf(stderr, "fault: SIGUSR1 raised inside the write of %s\n", temporary.c_str());
      std::fflush(stderr);
    }
    const std::string trainer = checkpoint.trainer.dump(1) + "\n";
    entries.push_back(put("trainer.json", trainer.data(), trainer.size()));
    for (const auto& entry : entries) {
      manifest["files"][entry.name] = {{"bytes", entry.size}, {kCheckpointHash, entry.hash}};
      written.bytes += static_cast<int64_t>(entry.size);
    }
    const std::string manifest_text = manifest.dump(1) + "\n";
    write_file_synced(temporary + "/manifest.json", manifest_text.data(), manifest_text.size());
    written.bytes += static_cast<int64_t>(manifest_text.size());
  } catch (...) {
    remove_all_quietly(temporary);
    throw;
  }
  try {
    sync_directory(temporary);
    // A checkpoint of this step from an earlier attempt (a resume from an
    // older one) is replaced: moved aside, the new one renamed in, then removed.
    const std::string replaced = final_path + ".replaced.tmp";
    const bool had_old = fs::exists(final_path, error);
    if (had_old) {
      remove_all_quietly(replaced);
      if (std::rename(final_path.c_str(), replaced.c_str()) != 0) throw Error(io_failure("move aside", final_path));
    }
    if (std::rename(temporary.c_str(), final_path.c_str()) != 0) {
      const std::string message = io_failure("move checkpoint into place at", final_path);
      if (had_old) std::rename(replaced.c_str(), final_path.c_str());  // put the old one back
      throw Error(message);
    }
    sync_directory(dir);
    if (had_old) remove_all_quietly(replaced);
  } catch (const Error&) {
    remove_all_quietly(temporary);
    throw;
  }
  // Only now that the new one is durable: the folder holds one history, so
  // checkpoints past this step (of a run resumed from an older one, or
  // damaged ones it skipped) go, then those beyond `keep`.
  for (const auto& path : list_checkpoints(dir)) {
    if (checkpoint_step(path) > step) remove_all_quietly(path);
  }
  const auto all = list_checkpoints(dir);
  for (size_t i = static_cast<size_t>(std::max<int64_t>(keep, 1)); i < all.size(); ++i) remove_all_quietly(all[i]);
  written.path = final_path;
  written.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return written;
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::error_code error;
  if (!fs::exists(dir, error)) return {};
  if (!fs::is_directory(dir, error)) {
    throw Error("--checkpoint-dir " + dir + " is a file, not a folder; give a folder path");
  }
  std::vector<std::pair<int64_t, std::string>> found;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    const int64_t step = step_of(entry.path().filename().string());
    if (step >= 0 && entry.is_directory(error)) found.emplace_back(step, entry.path().string());
  }
  if (error) throw Error("cannot list --checkpoint-dir " + dir + ": " + error.message());
  std::sort(found.rbegin(), found.rend());
  std::vector<std::string> paths;
  for (auto& item : found) paths.push_back(std::move(item.second));
  return paths;
}

int remove_unfinished_checkpoints(const std::string& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) return 0;
  int removed = 0;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0 && name.compare(0, 5, "step-") == 0) {
      // A checkpoint moved aside to be replaced, whose replacement never
      // arrived, is complete: it goes back.
      const std::string suffix = ".replaced.tmp";
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        const std::string original = dir + "/" + name.substr(0, name.size() - suffix.size());
        if (!fs::exists(original, error) && std::rename(entry.path().c_str(), original.c_str()) == 0) continue;
      }
      remove_all_quietly(entry.path().string());
      ++removed;
    }
  }
  return removed;
}

Checkpoint read_checkpoint(const std::string& path) {
  std::error_code error;
  if (!fs::is_directory(path, error)) {
    throw Error("checkpoint " + path + " does not exist or is not a folder; give a step-N folder of --checkpoint-dir");
  }
  return parse_checkpoint(
      [&path](const std::string& name) -> std::optional<std::string> {
        try {
          return read_file(path + "/" + name);
        } catch (const Error&) {
          return std::nullopt;  // parse_checkpoint names it
        }
      },
      path);
}

std::optional<FoundCheckpoint> newest_valid_checkpoint(const std::string& dir,
                                                       const std::function<void(const std::string&)>& warn) {
  for (const auto& path : list_checkpoints(dir)) {
    try {
      return FoundCheckpoint{path, read_checkpoint(path)};
    } catch (const Error& e) {
      warn(std::string(e.what()).substr(0, std::string(e.what()).find("; resume from an older")) +
           "; trying an older one");
    }
  }
  return std::nullopt;
}

int64_t checkpoint_step(const std::string& path) { return step_of(fs::path(path).filename().string()); }

std::string choose_resume(const Config& config, const std::function<void(const std::string&)>& warn) {
  const std::string dir = checkpoint_dir(config);
  const std::string& mode = config.checkpoint.resume;
  if (mode == "never") {
    const auto existing = list_checkpoints(dir);
    if (!existing.empty()) {
      throw UsageError("--checkpoint-dir " + dir + " already holds checkpoints of an earlier run (newest " +
                       fs::path(existing.front()).filename().string() +
                       "); continue it with --resume auto, or start anew with another --out-dir or --checkpoint-dir");
    }
    if (config.checkpoint.every_steps > 0 || config.checkpoint.every_minutes > 0) make_folder(dir);
    return "";
  }
  if (mode == "auto") {
    const int removed = remove_unfinished_checkpoints(dir);
    if (removed > 0) warn("removed " + std::to_string(removed) + " unfinished checkpoint folder(s) (*.tmp) in " + dir);
    auto found = newest_valid_checkpoint(dir, warn);
    if (!found) {
      warn("--resume auto: no valid checkpoint in " + dir + "; starting fresh");
      return "";
    }
    return found->path;
  }
  if (mode.size() > 4 && mode.compare(mode.size() - 4, 4, ".tmp") == 0) {
    throw UsageError("--resume " + mode + " is an unfinished checkpoint (.tmp); give a complete step-N folder");
  }
  std::error_code error;
  if (!fs::is_directory(mode, error)) {
    throw UsageError("--resume " + mode + " is not a checkpoint folder; give never, auto or the path of a step-N folder");
  }
  return mode;
}

}  // namespace dtrain
