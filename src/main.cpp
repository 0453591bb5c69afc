// dtrain: data-parallel training over MPI. Every rank runs this same program;
// see docs/architecture.md for how a step flows through the pieces.
#include "cli/options.h"
#include "comm/cpu_share.h"
#include "comm/mpi_communicator.h"
#include "comm/placement.h"
#include "comm/watchdog.h"
#include "common/error.h"
#include "io/files.h"
#include "data/dataset.h"
#include "io/weights.h"
#include "models/models.h"
#include "models/precision.h"
#include "data/batch_plan.h"
#include "run/checkpoint.h"
#include "run/metrics_log.h"
#include "run/preemption.h"
#include "comm/agreement.h"
#include "plan/plan_command.h"
#include "train/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>

namespace {


// "3 thread(s) per rank + 1 for communication (4 CPUs in this rank's affinity
// mask; 2 ranks on this host)"; a range if ranks differ (collective).
std::string describe_threads(dtrain::Communicator& comm, const dtrain::ThreadPlan& plan) {
  const auto counts = comm.all_gather(plan.threads);
  const auto [fewest, most] = std::minmax_element(counts.begin(), counts.end());
  std::string text = std::to_string(*fewest);
  if (*most != *fewest) text += "-" + std::to_string(*most);
  text += " thread(s) per rank";
  if (plan.comm_thread) text += " + 1 for communication";
  return text + " (" + (*most != *fewest ? "rank " + std::to_string(comm.rank()) + ": " : "") + plan.reason + ")";
}

// `mpi` carries start-up agreement; training uses it too, or NCCL over it.
// `watchdog` has watched every collective since MPI_Init.
int run(dtrain::MpiCommunicator& mpi, dtrain::JobWatchdog& watchdog, const std::vector<std::string>& args) {
  using namespace dtrain;
  if (!args.empty() && args.front() == "plan") {
    return run_plan(mpi, watchdog, std::vector<std::string>(args.begin() + 1, args.end()));
  }
  const bool root = mpi.rank() == 0;

  ParsedOptions parsed;
  run_agreed(mpi, [&] {
    parsed = parse_options(args);
    // The job's own timeout from here, this step's exchange included.
    watchdog.set_timeout(parsed.config.distributed.collective_timeout);
  }, "options agreement");
  if (parsed.help_requested || parsed.dump_requested) {
    if (root) std::cout << (parsed.help_requested ? parsed.help_text : dump_config(parsed)) << std::flush;
    return 0;
  }
  run_agreed(mpi, [&] { check_same_config(mpi, parsed.config); }, "configuration agreement");

  BatchPlan plan;
  Placement placement;
  CpuShare cpu_share;
  run_agreed(mpi, [&] { cpu_share = measure_cpu_share(mpi); }, "CPU-share agreement");
  // auto starts from the whole share of each rank; the trainer narrows it.
  const bool auto_micro = parsed.config.batch.micro_batch_size == kAutoMicroBatch;
  run_agreed(mpi, [&] {
    plan = derive_batch_plan(auto_micro ? 0 : parsed.config.batch.micro_batch_size,
                             parsed.config.batch.grad_accum_steps, parsed.config.batch.global_batch_size,
                             mpi.world_size());
    placement = choose_placement(parsed.config.distributed, mpi.local_rank());
  }, "batch-plan agreement");
  run_agreed(mpi, [&] { check_same_placement(mpi, placement); }, "same-placement agreement");
  const ThreadPlan threads = plan_threads(parsed.config.run.threads, std::getenv("OMP_NUM_THREADS"), cpu_share,
                                          parsed.config.distributed.overlap, placement.backend, mpi.world_size());
  placement.overlap = threads.overlap;
  const std::string threads_line = describe_threads(mpi, threads);
  // From here on "auto" choices and derived batch sizes are resolved, and
  // printed and recorded as such.
  Config resolved = parsed.config;
  resolved.distributed.overlap = placement.overlap ? Switch::On : Switch::Off;
  resolved.run.threads = threads.threads;
  resolved.batch.micro_batch_size = auto_micro ? kAutoMicroBatch : plan.micro_batch_size;
  resolved.batch.grad_accum_steps = auto_micro ? 0 : plan.grad_accum_steps;
  resolved.batch.global_batch_size = plan.global_batch_size;
  if (resolved.optimizer.eps == 0) resolved.optimizer.eps = default_eps(resolved.optimizer.kind);
  const Config& config = resolved;
  const std::unique_ptr<Communicator> backend = make_backend(placement, mpi, config.distributed.collective_timeout);
  Communicator& comm = backend ? *backend : mpi;
  // The training backend's collectives are watched too, and it is aborted
  // first when the watchdog fires.
  const std::string gpu = placement.device == DeviceKind::Cuda ? "GPU " + std::to_string(placement.device_index) : "";
  const JobWatchdog::Attachment watched_backend(watchdog, comm, gpu);
  const torch::Device device = placement.device == DeviceKind::Cuda
                                   ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(placement.device_index))
                                   : torch::Device(torch::kCPU);
  // --precision auto: each rank resolves it for its device; all must agree.
  resolved.run.precision = resolve_precision(parsed.config.run.precision, device);
  const auto precisions = mpi.all_gather(static_cast<int64_t>(resolved.run.precision));
  run_agreed(mpi, [&] {
    const auto& choices = precisions;
    if (*std::min_element(choices.begin(), choices.end()) != *std::max_element(choices.begin(), choices.end())) {
      throw UsageError("--precision auto resolved differently across ranks (their GPUs differ in bf16 support); "
                       "give --precision fp32, tf32 or bf16-mixed");
    }
  }, "precision agreement");
  if (root) {
    std::cout << "dtrain: " << comm.world_size() << " rank(s) on " << placement.describe() << "; " << threads_line
              << "; precision " << to_string(config.run.precision)
              << "\nresolved configuration (trajectory hash " << hash_text(trajectory_hash(config)) << "):\n"
              << config_to_ini(config) << std::flush;
  }

  torch::set_num_threads(threads.threads);
  torch::manual_seed(config.run.seed);

  Dataset data;
  run_agreed(mpi, [&] { data = load_dataset(config); }, "dataset agreement");

  // Where the run starts: rank 0 resolves --resume, every rank reads the
  // same checkpoint.
  std::string resume_path;
  run_agreed(mpi, [&] {
    if (root) resume_path = choose_resume(config, [](const std::string& warning) {
      std::fprintf(stderr, "dtrain: warning: %s\n", warning.c_str());
    });
  }, "resume agreement");
  const bool explicit_path = config.checkpoint.resume != "never" && config.checkpoint.resume != "auto";
  const int64_t resume_step = mpi.all_gather(resume_path.empty() ? -1 : 0)[0];
  if (resume_step == 0 && !explicit_path) {
    // Rank 0 chose the newest valid checkpoint: tell the others which.
    const auto chosen = mpi.all_gather(root ? static_cast<int64_t>(checkpoint_step(resume_path)) : 0);
    resume_path = checkpoint_dir(config) + "/" + checkpoint_name(chosen[0]);
  } else if (resume_step == 0) {
    resume_path = config.checkpoint.resume;
  }
  std::optional<Checkpoint> resume;
  // A measurement at fixed weights (--measure-noise-scale or
  // --measure-sharpness) instead of training.
  const int64_t measure_steps = config.study.measure_noise_scale;
  const int64_t measure_sharpness = config.study.measure_sharpness;
  const bool measuring = measure_steps > 0 || measure_sharpness > 0;
  const std::string measure_flag = measure_steps > 0 ? "--measure-noise-scale" : "--measure-sharpness";
  run_agreed(mpi, [&] {
    if (measure_steps > 0 && measure_sharpness > 0) {
      throw UsageError("--measure-noise-scale and --measure-sharpness are two runs: give one of them");
    }
    if (!resume_path.empty()) resume = read_checkpoint(resume_path);
    if (measuring && resume_path.empty() && config.init_from.empty()) {
      throw UsageError(config.checkpoint.resume == "never"
                           ? measure_flag + " measures given weights: add --init-from W.pt or --resume auto|PATH"
                           : measure_flag + " found no checkpoint in " + checkpoint_dir(config) +
                                 " to measure; give --resume PATH or --init-from W.pt");
    }
  }, "checkpoint-read agreement");

  std::shared_ptr<Model> model;
  std::unique_ptr<Trainer> trainer;
  std::unique_ptr<MetricsLog> log;
  run_agreed(mpi, [&] {
    model = make_model(config.model, data.input_shape, data.num_classes);
    if (!config.init_from.empty() && !resume) load_into(*model, read_weights(config.init_from), config.init_from);
    model->to(device);
    trainer = std::make_unique<Trainer>(config, plan, comm, mpi, data, model);
    if (resume) trainer->restore(*resume, resume_path);
  }, "model agreement");
  if (auto_micro) {
    // --micro-batch-size auto: probe each candidate of the levers left to
    // auto (no communication), exchange; time each at the smallest of the
    // ranks' answers, exchange; use the fastest. The exchanges stay outside
    // the agreed steps.
    auto exchange = [&](const std::vector<int64_t>& mine) {
      std::vector<std::vector<int64_t>> everyone;
      for (const int64_t value : mine) everyone.push_back(mpi.all_gather(value));
      return everyone;
    };
    std::vector<int64_t> largest, nanoseconds;
    run_agreed(mpi, [&] { largest = trainer->largest_fitting_micro_batches(); }, "micro-batch probe agreement");
    const auto choices = exchange(largest);
    run_agreed(mpi, [&] { nanoseconds = trainer->time_candidates(choices); }, "micro-batch timing agreement");
    const auto timings = exchange(nanoseconds);
    run_agreed(mpi, [&] {
      trainer->use_micro_batch(choices, timings);
      resolved.model.activation_checkpointing =
          trainer->activation_checkpointing() ? ActivationCheckpointing::Blocks : ActivationCheckpointing::None;
      resolved.batch.micro_batch_size = trainer->plan().micro_batch_size;
      resolved.batch.grad_accum_steps = trainer->plan().grad_accum_steps;
    }, "micro-batch agreement");
  }
  run_agreed(mpi, [&] {
    const int64_t keep_bytes = resume ? resume->trainer.value("metrics_bytes", int64_t{0}) : -1;
    // A measurement writes only its JSON file: it may share --out-dir with
    // the run whose checkpoint it measures, whose records stay as they are.
    log = std::make_unique<MetricsLog>(config.run.out_dir, root && !measuring, keep_bytes);
    log->write_json("config.json", config_to_json(config));
  }, "metrics-log agreement");
  if (resume && root) {
    std::printf("resuming from %s at step %lld of %lld\n", resume_path.c_str(),
                static_cast<long long>(trainer->start_step()), static_cast<long long>(trainer->total_steps()));
    if (!log->note().empty()) std::printf("note: %s\n", log->note().c_str());
    std::fflush(stdout);
  }
  resume.reset();  // its tensors are in the model and optimizer now
  // Identical weights everywhere, whether from --init-from or the seed (a
  // checkpoint is the same file on every rank already).
  if (trainer->start_step() == 0) trainer->broadcast_initial_state();

  RunOutcome outcome;
  if (measure_steps > 0) {
    outcome = trainer->measure_noise_scale(measure_steps);
  } else if (measure_sharpness > 0) {
    outcome = {RunStatus::Measured, trainer->measure_sharpness(measure_sharpness)};
    outcome.summary["status"] = to_string(RunStatus::Measured);
    outcome.summary["steps"] = trainer->start_step();
  } else {
    outcome = trainer->run(*log);
  }
  nlohmann::json& summary = outcome.summary;
  // --sharpness-at-end: after the final evaluation, into summary.json.
  if (outcome.status == RunStatus::Completed && config.study.sharpness_at_end > 0) {
    summary["sharpness"] = trainer->measure_sharpness(config.study.sharpness_at_end);
  }
  summary["launch_hash"] = hash_text(launch_hash(parsed.config));
  summary["trajectory_hash"] = hash_text(trajectory_hash(config));
  const RunStatus status = outcome.status;
  run_agreed(mpi, [&] {
    if (root && !config.export_path.empty() && status == RunStatus::Completed) {
      save_weights(model_state(*model), config.export_path);
      std::cout << "exported weights to " << config.export_path << "\n";
    }
    if (root && status == RunStatus::Measured) {
      const std::string path = config.run.out_dir + (measure_steps > 0 ? "/noise_scale.json" : "/sharpness.json");
      std::filesystem::create_directories(config.run.out_dir);
      write_file_atomically(path, summary.dump(2) + "\n");
      std::cout << "wrote " << path << "\n";
    } else if (root) {
      log->write_json("summary.json", summary);
    }
    if (!root) return;
    if (status == RunStatus::Preempted) {
      std::printf("preempted at step %lld; checkpoint %s; resume with --resume auto\n",
                  static_cast<long long>(summary["steps"].get<int64_t>()),
                  summary["checkpoint"].get<std::string>().c_str());
    } else if (status == RunStatus::Completed && summary.contains("tokens_per_sec")) {
      const bool has_val = summary["val_bits_per_byte"].is_number();
      auto number = [&](const char* key) { return summary[key].is_number() ? summary[key].get<double>() : NAN; };
      std::printf("done: %s %.4f nats/token (%.3f bits/byte), %.1f s training, %.0f tokens/s; see %s/\n",
                  has_val ? "val loss" : "train-subset loss",
                  number(has_val ? "val_loss" : "train_eval_loss"),
                  number(has_val ? "val_bits_per_byte" : "train_eval_bits_per_byte"),
                  summary["train_seconds"].get<double>(), summary["tokens_per_sec"].get<double>(),
                  config.run.out_dir.c_str());
    } else if (status == RunStatus::Completed) {
      std::printf("done: test accuracy %.4f, train-subset accuracy %.4f, %.1f s training, %.0f samples/s; see %s/\n",
                  summary["test_accuracy"].get<double>(), summary["train_eval_accuracy"].get<double>(),
                  summary["train_seconds"].get<double>(), summary["samples_per_sec"].get<double>(),
                  config.run.out_dir.c_str());
    }
    std::fflush(stdout);
  }, "export agreement");
  switch (status) {
    case RunStatus::Preempted: return kExitPreempted;
    case RunStatus::Diverged: return kExitDiverged;
    case RunStatus::Completed:
    case RunStatus::Measured: break;
  }
  return kExitCompleted;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any tensor exists, so every CPU byte LibTorch hands out is counted.
  // DTRAIN_MEMORY_ACCOUNTING=0 leaves LibTorch's allocator alone (its cost
  // is measured with it: docs/performance.md).
  const char* accounting = std::getenv("DTRAIN_MEMORY_ACCOUNTING");
  if (accounting == nullptr || std::string(accounting) != "0") dtrain::install_cpu_memory_accounting();
  std::unique_ptr<dtrain::MpiSession> mpi;
  std::unique_ptr<dtrain::MpiCommunicator> world;
  try {
    mpi = std::make_unique<dtrain::MpiSession>(&argc, &argv);
    world = std::make_unique<dtrain::MpiCommunicator>();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "dtrain: error: cannot start MPI: %s\n", dtrain::one_line_message(error).c_str());
    if (mpi) dtrain::MpiSession::abort_world(1);
    return dtrain::kExitError;
  }
  dtrain::MpiCommunicator& comm = *world;
  // Every collective from here on is watched (--collective-timeout): with
  // the default timeout until the options give theirs.
  auto watchdog = std::make_unique<dtrain::JobWatchdog>(dtrain::Config().distributed.collective_timeout, comm);
  // From the start: a preemption signal during start-up stops the run at
  // its first step boundary (with a checkpoint) instead of killing it.
  dtrain::install_preemption_handlers();
  try {
    const int code = run(comm, *watchdog, std::vector<std::string>(argv + 1, argv + argc));
    watchdog.reset();
    world.reset();  // before MPI_Finalize
    return code;
  } catch (const dtrain::AgreedFailure& failure) {
    watchdog.reset();
    world.reset();
    return failure.exit_code();  // already reported, and every rank knows
  } catch (const std::exception& error) {
    // A failure on this rank alone, past start-up: the other ranks may be
    // waiting in a collective, so end the whole job rather than hang.
    dtrain::print_error(comm.rank(), comm.world_size(), dtrain::one_line_message(error), /*name_rank=*/true);
    if (comm.world_size() > 1) dtrain::MpiSession::abort_world(1);
    return dtrain::kExitError;
  }
}
