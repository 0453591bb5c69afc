// Trainer <-> checkpoint: what the state after a step is made of, and how a
// resumed run takes it back (run/checkpoint.h for the files themselves).
#include "cli/option_table.h"
#include "cli/options.h"
#include "comm/agreement.h"
#include "common/error.h"
#include "io/files.h"
#include "memory/out_of_memory.h"
#include "optim/optimizer.h"
#include "run/checkpoint.h"
#include "run/checkpoint_files.h"
#include "run/evaluator.h"
#include "run/updater.h"
#include "train/trainer.h"

#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>

namespace dtrain {

namespace {

std::string bytes_to_hex(const at::Tensor& bytes) {
  const at::Tensor cpu = bytes.contiguous().cpu();
  return hex_text(cpu.data_ptr<uint8_t>(), static_cast<size_t>(cpu.numel()));
}

at::Tensor hex_to_bytes(const std::string& text) {
  if (text.size() % 2 != 0) throw Error("an RNG state of odd length");
  at::Tensor bytes = torch::empty({static_cast<int64_t>(text.size() / 2)}, torch::kUInt8);
  auto* data = bytes.data_ptr<uint8_t>();
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw Error("an RNG state that is not hex");
  };
  for (size_t i = 0; i < text.size(); i += 2) data[i / 2] = static_cast<uint8_t>(digit(text[i]) << 4 | digit(text[i + 1]));
  return bytes;
}

std::string generator_name(const at::Generator& generator) { return generator.device().str(); }

int64_t bits_of(double value) {
  int64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

double double_of(int64_t bits) {
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

}  // namespace

std::vector<at::Generator> rng_generators(const c10::Device& device) {
  std::vector<at::Generator> list = {at::globalContext().defaultGenerator(c10::kCPU)};
  if (device.is_cuda()) list.push_back(at::globalContext().defaultGenerator(device));
  return list;
}

void Trainer::save_checkpoint(int64_t steps_done, MetricsLog& log) {
  // Collective parts first, on every rank: identical replicas, loss sums.
  // No collective inside a run_agreed step: a rank failing alone would meet
  // the others' all-gather with its status word.
  const NamedTensors state = model_state(*model_);
  const NamedTensors optimizer_state = updater_->state();  // collective when sharded
  WrittenCheckpoint written;
  std::vector<uint64_t> sums;
  run_agreed(control_, [&] { sums = replica_checksums(state); }, "replica-checksum agreement");
  const std::string drift = compare_replicas(control_, state, sums, steps_done);
  run_agreed(control_, [&] {
    if (!drift.empty()) throw Error(drift);
  }, "replica agreement");
  const int64_t local_loss_bits = bits_of(loss_.since_logged.item<double>());
  const std::vector<int64_t> loss_bits = control_.all_gather(local_loss_bits);
  run_agreed(control_, [&] {
    if (!is_root()) return;
    nlohmann::json rng = nlohmann::json::object();
    for (auto& generator : rng_generators(device_)) {
      std::lock_guard<std::mutex> lock(generator.mutex());
      rng[generator_name(generator)] = bytes_to_hex(generator.get_state());
    }
    nlohmann::json options = nlohmann::json::object();
    for (const auto& spec : option_table()) options[spec.name] = spec.text(config_);
    nlohmann::json loss_sums = nlohmann::json::array();
    for (int64_t bits : loss_bits) loss_sums.push_back(double_of(bits));
    Checkpoint checkpoint;
    checkpoint.model = state;
    checkpoint.optimizer = optimizer_state;
    checkpoint.trainer = {
        {"format", kCheckpointFormat},
        {"step", steps_done},
        {"epoch", batch_.position().epoch},
        {"samples_in_epoch", batch_.position().offset},
        {"samples_seen", batch_.position().samples_seen},
        {"batch_schedule", batch_.state()},
        {"next_lr", lr_now(steps_done)},
        {"trajectory_hash", hash_text(trajectory_hash(config_))},
        {"options", options},
        {"loss_sums", loss_sums},
        {"loss_steps", loss_.steps},
        {"skipped_steps", nonfinite_.skipped_total()},
        {"consecutive_skips", nonfinite_.consecutive()},
        {"train_seconds", time_.train_seconds},
        {"metrics_bytes", log.bytes_written()},
        {"last_eval", evaluator_->last()},
        {"target", evaluator_->target_state()},
        {"noise_scale", noise_ ? noise_->state() : nlohmann::json(nullptr)},
        {"rng", rng},
        {"out_of_memory", out_of_memory_->history()},
        {"written_at", utc_now()},
    };
    plan_.add_to(checkpoint.trainer);
    written = write_checkpoint(checkpoint_dir(config_), steps_done, checkpoint, config_.checkpoint.keep);
  }, "checkpoint agreement");
  if (!is_root()) return;
  log.record({{"event", "checkpoint"},
              {"step", steps_done},
              {"path", written.path},
              {"bytes", written.bytes},
              {"write_seconds", written.seconds}});
  std::fprintf(stderr, "checkpoint step %lld: %s (%.1f MB in %.2f s)\n", static_cast<long long>(steps_done),
               written.path.c_str(), static_cast<double>(written.bytes) / 1e6, written.seconds);
  std::fflush(stderr);
}

void Trainer::restore(const Checkpoint& checkpoint, const std::string& source) {
  const nlohmann::json& saved = checkpoint.trainer;
  check_resume_compatible(saved, config_, source);
  try {
    const int64_t step = saved.at("step").get<int64_t>();
    if (step < 0 || step > length_.total_steps) {
      throw Error("checkpoint " + source + " is at step " + std::to_string(step) + ", outside this run's " +
                  std::to_string(length_.total_steps) + " steps");
    }
    if (step > length_.steps_to_run) {
      throw UsageError("checkpoint " + source + " is at step " + std::to_string(step) + ", past --max-steps " +
                       std::to_string(length_.steps_to_run) + "; raise --max-steps (0: no limit)");
    }
    load_into(*model_, checkpoint.model, source + "/model.pt");
    updater_->load(checkpoint.optimizer, source + "/optimizer.pt");
    // Loss accumulators: each rank its own with the same world size (so the
    // logged means are bit-identical); otherwise rank 0 takes their sum.
    const auto& sums = saved.at("loss_sums");
    double local = 0;
    if (static_cast<int>(sums.size()) == comm_.world_size()) {
      local = sums.at(static_cast<size_t>(comm_.rank())).get<double>();
    } else if (is_root()) {
      for (const auto& sum : sums) local += sum.get<double>();
    }
    loss_.since_logged.fill_(local);
    loss_.steps = saved.at("loss_steps").get<int64_t>();
    nonfinite_.restore(saved.at("skipped_steps").get<int64_t>(), saved.at("consecutive_skips").get<int64_t>());
    time_.train_seconds = saved.at("train_seconds").get<double>();
    // "target": written since format 1 gained it; absent in older checkpoints.
    evaluator_->restore(saved.at("last_eval"), saved.value("target", nlohmann::json(nullptr)),
                        [&](const std::string& other_target) {
                          if (!is_root()) return;
                          std::fprintf(stderr, "dtrain: warning: %s was written with --target %s; steps_to_target "
                                       "counts this run's evaluations only, from step %lld\n", source.c_str(),
                                       other_target.c_str(), static_cast<long long>(step));
                        });
    if (noise_) noise_->restore(saved.value("noise_scale", nlohmann::json(nullptr)));
    const auto& rng = saved.at("rng");
    for (auto& generator : rng_generators(device_)) {
      const std::string name = generator_name(generator);
      if (!rng.contains(name)) continue;  // e.g. a CPU checkpoint continued on a GPU: that generator starts fresh
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(hex_to_bytes(rng.at(name).get<std::string>()));
    }
    start_step_ = step;
    // The position and the batch: stored under a changing batch, else the
    // step's (checkpoints from before --batch-schedule hold only the step).
    if (batch_.constant()) {
      batch_.restore_steps(step);
    } else {
      batch_.restore(saved.at("batch_schedule"), step);
      use_global_batch(batch_.global_batch());
    }
    // A split narrowed by out-of-memory on this world size stays narrowed:
    // the options' split would only run out again.
    const nlohmann::json oom = saved.value("out_of_memory", nlohmann::json::array());
    out_of_memory_->restore_history(oom);
    if (updater_->has_state()) memory_.set_resident_optimizer_state(optimizer_state_bytes());
    const int64_t saved_micro = saved.at("micro_batch_size").get<int64_t>();
    const int64_t saved_accum = saved.at("grad_accum_steps").get<int64_t>();
    if (!oom.empty() && saved.at("world_size").get<int64_t>() == plan_.world_size &&
        saved_micro * saved_accum == plan_.local_batch_size() && saved_micro < plan_.micro_batch_size) {
      if (is_root()) {
        std::fprintf(stdout, "keeping the checkpoint's split micro %lld x accum %lld (out of memory at step %lld at micro %lld)\n",
                     static_cast<long long>(saved_micro), static_cast<long long>(saved_accum),
                     static_cast<long long>(oom.back().at("step").get<int64_t>()),
                     static_cast<long long>(oom.back().at("from_micro_batch_size").get<int64_t>()));
      }
      plan_ = plan_.with_micro_batch(saved_micro);
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error("checkpoint " + source + "/trainer.json lacks a field or has a wrong type (" +
                std::string(e.what()).substr(0, 80) + "); resume from another checkpoint");
  }
}

}  // namespace dtrain
