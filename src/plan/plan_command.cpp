#include "plan/plan_command.h"

#include "cli/options.h"
#include "comm/agreement.h"
#include "comm/cpu_share.h"
#include "comm/placement.h"
#include "comm/watchdog.h"
#include "common/error.h"
#include "data/dataset.h"
#include "io/files.h"
#include "models/models.h"
#include "models/precision.h"
#include "plan/plan_model.h"
#include "train/trainer.h"

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

namespace dtrain {

namespace po = boost::program_options;

namespace {

constexpr const char* kUsage =
    "usage: dtrain plan --config CONFIG [training options] --max-ranks N\n"
    "                   (--fit STUDY/fit.json | --noise-scale-json FILE | --steps S_MIN:B_CRIT)\n"
    "                   [--network ALPHA_S,BETA_S_PER_BYTE | --measure-network] [--deadline SECONDS] [--out DIR]\n"
    "Predicts steps, step time and time to target for global batches (powers of two) on 1 to N ranks, and\n"
    "recommends the fastest split and the cheapest in rank-seconds (within --deadline). Run it under mpirun\n"
    "to measure the network (docs/studies.md, \"Planning the batch\").\n"
    "  --fit FILE                a study's fit.json: S = S_min (1 + B_crit/B), bootstrap intervals from its residuals\n"
    "  --fit-optimizer NAME      which fit in it (default: the config's optimizer, else the first)\n"
    "  --fit-batches LO:HI       fit only the study's points with LO <= B <= HI\n"
    "  --noise-scale-json FILE   summary.json of a --measure-noise-scale run: steps relative to its batch\n"
    "  --steps S_MIN:B_CRIT      a stated curve (no interval)\n"
    "  --network A,B             all-reduce cost per ring phase: A seconds + B seconds per byte\n"
    "  --network-inter A,B       the same across nodes (default: --network's)\n"
    "  --measure-network         time all-reduces over the ranks started (4 KiB to 64 MiB) and fit A and B\n"
    "  --ranks-per-node R        ranks per node of the hierarchical ring (default 8)\n"
    "  --max-ranks N             plan 1, 2, 4, ... N ranks\n"
    "  --batches LO:HI           global batches to plan (powers of two, default 16:16384)\n"
    "  --max-micro M             the largest micro-batch probed (default 1024; fewer if memory runs out)\n"
    "  --compute-per-sample S[,C] no probe: a micro-step of m samples takes C + S x m seconds\n"
    "  --update-seconds U        a step's fixed part, the update with it (default: probed; 0 with --compute-per-sample)\n"
    "  --comm-overlap F          share of the all-reduce hidden behind the last micro-step (default: measured)\n"
    "  --deadline SECONDS        the cheapest plan must reach the target within it\n"
    "  --bootstrap N             bootstrap refits for the intervals (default 2000)\n"
    "  --out DIR                 where plan.json goes (default runs/plan)";

struct PlanFlags {
  std::string fit, fit_optimizer, noise_scale_json, steps, network, network_inter, batches = "16:16384",
                                                                                 fit_batches = "0:1e18", out = "runs/plan";
  std::string compute_per_sample;  // SECONDS[,OVERHEAD]: no probe
  bool measure_network = false;
  int64_t max_ranks = 0, ranks_per_node = 8, max_micro = 1024, bootstrap = 2000;
  double deadline = 0, update_seconds = -1, overlap = -1;
  bool help = false;
};

std::pair<double, double> two_numbers(const std::string& flag, const std::string& text, char separator,
                                      const char* example) {
  const size_t at = text.find(separator);
  try {
    if (at == std::string::npos) throw std::invalid_argument("one");
    size_t used = 0;
    const double first = std::stod(text.substr(0, at), &used);
    if (used != at) throw std::invalid_argument("first");
    const std::string rest = text.substr(at + 1);
    const double second = std::stod(rest, &used);
    if (used != rest.size() || !std::isfinite(first) || !std::isfinite(second) || first < 0 || second < 0) {
      throw std::invalid_argument("second");
    }
    return {first, second};
  } catch (const std::exception&) {
    throw UsageError("--" + flag + " '" + printable_excerpt(text) + "' is not two non-negative numbers: write e.g. --" +
                     flag + " " + example);
  }
}

// Splits `args` into the plan's own flags and the training options.
std::pair<PlanFlags, std::vector<std::string>> parse_plan_flags(const std::vector<std::string>& args, int world_size) {
  PlanFlags flags;
  po::options_description described("dtrain plan");
  described.add_options()
      ("help", po::bool_switch(&flags.help))
      ("fit", po::value(&flags.fit))
      ("fit-optimizer", po::value(&flags.fit_optimizer))
      ("fit-batches", po::value(&flags.fit_batches))
      ("noise-scale-json", po::value(&flags.noise_scale_json))
      ("steps", po::value(&flags.steps))
      ("network", po::value(&flags.network))
      ("network-inter", po::value(&flags.network_inter))
      ("measure-network", po::bool_switch(&flags.measure_network))
      ("ranks-per-node", po::value(&flags.ranks_per_node))
      ("max-ranks", po::value(&flags.max_ranks))
      ("deadline", po::value(&flags.deadline))
      ("out", po::value(&flags.out))
      ("batches", po::value(&flags.batches))
      ("max-micro", po::value(&flags.max_micro))
      ("compute-per-sample", po::value(&flags.compute_per_sample))
      ("update-seconds", po::value(&flags.update_seconds))
      ("comm-overlap", po::value(&flags.overlap))
      ("bootstrap", po::value(&flags.bootstrap));
  std::vector<std::string> rest;
  try {
    // No prefix guessing: a training option (--noise-scale) must not match a plan flag (--noise-scale-json).
    const auto style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    const po::parsed_options parsed =
        po::command_line_parser(args).options(described).style(style).allow_unregistered().run();
    po::variables_map values;
    po::store(parsed, values);
    po::notify(values);
    rest = po::collect_unrecognized(parsed.options, po::include_positional);
  } catch (const po::error& error) {
    throw UsageError(std::string("dtrain plan: ") + error.what() + "; see dtrain plan --help");
  }
  if (flags.help) return {flags, rest};
  const int sources = !flags.fit.empty() + !flags.noise_scale_json.empty() + !flags.steps.empty();
  if (sources != 1) {
    throw UsageError("dtrain plan needs one source of steps-to-target: --fit STUDY/fit.json, --noise-scale-json "
                     "FILE (from --measure-noise-scale) or --steps S_MIN:B_CRIT");
  }
  if (flags.max_ranks < 1) throw UsageError("dtrain plan needs --max-ranks N (N >= 1): the most ranks to plan for");
  if (flags.max_ranks > 1 && flags.network.empty() && !flags.measure_network) {
    throw UsageError("dtrain plan --max-ranks " + std::to_string(flags.max_ranks) +
                     " needs the network: --network ALPHA_S,BETA_S_PER_BYTE or --measure-network (under mpirun)");
  }
  if (!flags.network.empty() && flags.measure_network) {
    throw UsageError("dtrain plan: give --network or --measure-network, not both");
  }
  if (flags.measure_network && world_size < 2) {
    throw UsageError("--measure-network times all-reduces between ranks: run dtrain plan under mpirun -np 2 or more");
  }
  if (!flags.noise_scale_json.empty() && flags.deadline > 0) {
    throw UsageError("--deadline needs absolute steps-to-target: give --fit or --steps (a noise scale gives steps "
                     "relative to the current batch only)");
  }
  if (flags.max_micro < 1 || flags.ranks_per_node < 1 || flags.bootstrap < 0 || flags.deadline < 0) {
    throw UsageError("dtrain plan: --max-micro, --ranks-per-node must be positive; --bootstrap, --deadline not negative");
  }
  return {flags, rest};
}

std::vector<std::pair<double, double>> points_of_fit(const std::string& path, const std::string& wanted,
                                                     const std::string& optimizer, std::string& chosen) {
  nlohmann::json fit;
  try {
    std::ifstream in(path);
    if (!in) throw UsageError("--fit " + path + " cannot be read: give a study's fit.json (launch/study.sh writes it)");
    fit = nlohmann::json::parse(in);
    const auto& fits = fit.at("fits");
    if (fits.empty()) throw UsageError("--fit " + path + " holds no fit: run the study to its target first");
    if (!wanted.empty()) {
      chosen = wanted;
    } else if (fits.contains(optimizer)) {
      chosen = optimizer;
    } else {
      chosen = fits.begin().key();
    }
    if (!fits.contains(chosen)) throw UsageError("--fit " + path + " has no fit for optimizer '" + chosen + "'");
    std::vector<std::pair<double, double>> points;
    for (const auto& point : fits.at(chosen).at("points")) {
      if (point.at("steps_to_target").is_null()) continue;  // a batch that missed the target
      points.emplace_back(point.at("global_batch_size").get<double>(), point.at("steps_to_target").get<double>());
    }
    return points;
  } catch (const nlohmann::json::parse_error& error) {
    throw UsageError("--fit " + path + " is not a study's fit.json (not JSON, at byte " + std::to_string(error.byte) +
                     "); give the fit.json that launch/study.sh wrote");
  } catch (const nlohmann::json::exception&) {
    throw UsageError("--fit " + path + " is not a study's fit.json (no fits.OPTIMIZER.points with global_batch_size "
                     "and steps_to_target); give the fit.json that launch/study.sh wrote");
  }
}

StepsModel steps_model(const PlanFlags& flags, const Config& config, int64_t current_batch) {
  if (!flags.fit.empty()) {
    std::string optimizer;
    const auto points = points_of_fit(flags.fit, flags.fit_optimizer, to_string(config.optimizer.kind), optimizer);
    const auto [low, high] = two_numbers("fit-batches", flags.fit_batches, ':', "16:512");
    StepsModel model = steps_model_from_points(points, low, high, static_cast<int>(flags.bootstrap), 20);
    char text[640];
    std::snprintf(text, sizeof text,
                  "%s's fit (%s, %zu points): S_min %.0f, B_crit %.0f; 95%% prediction intervals of a run's steps from "
                  "%lld bootstrap refits of its relative residuals, each with one residual's scatter", flags.fit.c_str(), optimizer.c_str(), model.points.size(), model.fit.s_min,
                  model.fit.b_crit, static_cast<long long>(flags.bootstrap));
    model.describe = text;
    return model;
  }
  if (!flags.steps.empty()) {
    const auto [s_min, b_crit] = two_numbers("steps", flags.steps, ':', "5000:1000");
    StepsModel model;
    model.fit.s_min = s_min;
    model.fit.b_crit = b_crit;
    char text[160];
    std::snprintf(text, sizeof text, "given: S_min %.0f, B_crit %.0f (no interval)", s_min, b_crit);
    model.describe = text;
    return model;
  }
  nlohmann::json measured;
  try {
    std::ifstream in(flags.noise_scale_json);
    if (!in) throw UsageError("--noise-scale-json " + flags.noise_scale_json + " cannot be read");
    measured = nlohmann::json::parse(in);
    const auto& noise = measured.at("noise_scale");
    if (!noise.at("b_simple").is_number() || !(noise.at("b_simple").get<double>() > 0)) {
      throw UsageError("--noise-scale-json " + flags.noise_scale_json + " holds no positive B_simple (the measurement "
                       "saw no gradient signal over its noise): measure over more batches or later in training");
    }
    const double b_simple = noise.at("b_simple").get<double>();
    const auto& ci = noise.at("ci95");
    const double batch = static_cast<double>(measured.value("global_batch_size", current_batch));
    StepsModel model = steps_model_from_noise_scale(b_simple, ci.at(0).is_number() ? ci.at(0).get<double>() : NAN,
                                                    ci.at(1).is_number() ? ci.at(1).get<double>() : NAN, batch);
    char text[256];
    std::snprintf(text, sizeof text,
                  "B_simple %.0f measured at batch %.0f (%s): steps relative to batch %.0f's, Pollux's efficiency "
                  "(B_simple + B0)/(B_simple + B) with B_crit ~ B_simple; no S_min, so no absolute time",
                  b_simple, batch, flags.noise_scale_json.c_str(), batch);
    model.describe = text;
    return model;
  } catch (const nlohmann::json::exception&) {
    throw UsageError("--noise-scale-json " + flags.noise_scale_json + " is not the summary.json of a "
                     "--measure-noise-scale run (no noise_scale.b_simple and ci95); give that file");
  }
}

// Median of `repeats` all-reduces of `bytes` (after one untimed), the slowest rank's.
double time_all_reduce(Communicator& comm, int64_t bytes, int repeats, torch::Device device) {
  auto tensor = torch::ones({std::max<int64_t>(1, bytes / 4)}, torch::TensorOptions().dtype(torch::kFloat).device(device));
  std::vector<double> times;
  for (int repeat = 0; repeat <= repeats; ++repeat) {
    comm.barrier();
    const auto start = std::chrono::steady_clock::now();
    comm.all_reduce(tensor);
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (repeat > 0) times.push_back(seconds);
  }
  std::sort(times.begin(), times.end());
  const auto mine = static_cast<int64_t>(std::llround(times[times.size() / 2] * 1e9));
  const auto all = comm.all_gather(mine);
  return 1e-9 * static_cast<double>(*std::max_element(all.begin(), all.end()));
}

// A step's fixed part (zeroing, the non-finite check, the update, the
// loop's bookkeeping): the median world-1 step of one sample less its
// micro-step. World 1: no communication, so nothing data-parallel is timed.
double step_overhead(const Config& config, Communicator& local, const Dataset& data, const std::shared_ptr<Model>& model) {
  Trainer one(config, derive_batch_plan(1, 1, 0, 1), local, data, model);
  std::vector<double> times;
  for (int64_t step = 0; step < 30; ++step) {
    const auto start = std::chrono::steady_clock::now();
    one.train_step(step);
    if (step >= 5) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return std::max(0.0, times[times.size() / 2] - one.time_micro_step(1, 9).value_or(0));
}

}  // namespace

int run_plan(MpiCommunicator& mpi, JobWatchdog& watchdog, const std::vector<std::string>& args) {
  const bool root = mpi.rank() == 0;
  PlanFlags flags;
  ParsedOptions parsed;
  run_agreed(mpi, [&] {
    auto [plan_flags, rest] = parse_plan_flags(args, mpi.world_size());
    flags = plan_flags;
    if (!flags.help) parsed = parse_options(rest);
    watchdog.set_timeout(parsed.config.distributed.collective_timeout);
  }, "options agreement");
  if (flags.help) {
    if (root) std::cout << kUsage << "\n" << std::flush;
    return kExitCompleted;
  }
  Config config = parsed.config;
  config.batch.schedule = BatchSchedulePlan{};
  config.study = StudyOptions{};
  config.checkpoint = CheckpointOptions{};
  config.run.max_steps = 0;

  CpuShare cpu_share;
  run_agreed(mpi, [&] { cpu_share = measure_cpu_share(mpi); }, "CPU-share agreement");
  Placement placement;
  run_agreed(mpi, [&] { placement = choose_placement(config.distributed, mpi.local_rank()); }, "placement agreement");
  run_agreed(mpi, [&] { check_same_placement(mpi, placement); }, "same-placement agreement");
  const ThreadPlan threads = plan_threads(config.run.threads, std::getenv("OMP_NUM_THREADS"), cpu_share,
                                          config.distributed.overlap, placement.backend, mpi.world_size());
  placement.overlap = threads.overlap;
  torch::set_num_threads(threads.threads);
  const torch::Device device = placement.device == DeviceKind::Cuda
                                   ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(placement.device_index))
                                   : torch::Device(torch::kCPU);
  config.run.precision = resolve_precision(config.run.precision, device);

  Dataset data;
  std::shared_ptr<Model> model;
  double gradient_bytes = 0, parameters = 0;
  StepsModel steps;
  run_agreed(mpi, [&] {
    if (config.distributed.shard_optimizer_state == Switch::On) {
      throw UsageError("dtrain plan models the all-reduce of unsharded training (a sharded optimizer state adds an "
                       "all-gather after the update that it does not price): drop --shard-optimizer-state");
    }
    data = load_dataset(config);
    torch::manual_seed(config.run.seed);
    model = make_model(config.model, data.input_shape, data.num_classes);
    model->to(device);
    const double element = config.distributed.grad_reduce_dtype == ReduceDtype::Fp32 ? 4 : 2;
    for (const auto& parameter : trainable_parameters(*model)) parameters += static_cast<double>(parameter.numel());
    gradient_bytes = element * parameters;
    steps = steps_model(flags, config, config.batch.global_batch_size > 0 ? config.batch.global_batch_size : 1);
  }, "options-check agreement");
  if (root) {
    std::printf("dtrain plan: %d rank(s) on %s, %d thread(s) per rank; model %.3g M parameters (%.3g MB of gradients)\n",
                mpi.world_size(), placement.describe().c_str(), threads.threads, parameters / 1e6, gradient_bytes / 1e6);
    std::fflush(stdout);
  }

  // Compute: rank 0 probes at world 1 while the others wait.
  ComputeModel compute;
  LocalCommunicator local;
  std::unique_ptr<Trainer> probe;
  int64_t largest = 1;
  while (largest * 2 <= std::min<int64_t>(flags.max_micro, data.train.size())) largest *= 2;
  // Rank 0 may probe for many minutes alone: the others wait unwatched.
  watchdog.set_timeout(0);
  run_agreed(mpi, [&] {
    if (!flags.compute_per_sample.empty()) {
      const std::string given = flags.compute_per_sample.find(',') == std::string::npos
                                    ? flags.compute_per_sample + ",0"
                                    : flags.compute_per_sample;
      const auto [per_sample, overhead] = two_numbers("compute-per-sample", given, ',', "0.002,0.01");
      for (int64_t m = 1; m <= flags.max_micro; m *= 2) compute.micro_seconds.emplace_back(m, overhead + per_sample * static_cast<double>(m));
      compute.update_seconds = std::max(0.0, flags.update_seconds);
      char text[200];
      std::snprintf(text, sizeof text, "given: %.3g s + %.3g s per sample per micro-step, micro-batches up to %lld, "
                    "update %.3g s", overhead, per_sample, static_cast<long long>(flags.max_micro), compute.update_seconds);
      compute.describe = text;
      return;
    }
    if (!root) return;
    const BatchPlan plan = derive_batch_plan(largest, 1, 0, 1);
    probe = std::make_unique<Trainer>(config, plan, local, data, model);
    for (int64_t m = 1; m <= largest; m *= 2) {
      const std::optional<double> seconds = probe->time_micro_step(m, 5);
      if (!seconds) break;  // past --memory-budget (or the device's memory)
      compute.micro_seconds.emplace_back(m, *seconds);
    }
    if (compute.micro_seconds.empty()) throw Error("not even a micro-batch of 1 fits the memory budget");
    compute.update_seconds = flags.update_seconds >= 0 ? flags.update_seconds : step_overhead(config, local, data, model);
    char text[200];
    std::snprintf(text, sizeof text, "probed at world 1 with %d thread(s): micro-batches 1 to %lld (%.3g s at %lld), "
                  "fixed part of a step %.3g s", threads.threads, static_cast<long long>(compute.micro_seconds.back().first),
                  compute.micro_seconds.back().second, static_cast<long long>(compute.micro_seconds.back().first),
                  compute.update_seconds);
    compute.describe = text;
  }, "compute-probe agreement");
  watchdog.set_timeout(config.distributed.collective_timeout);

  // Network: given, or measured over every rank started.
  NetworkModel network;
  network.ranks_per_node = flags.ranks_per_node;
  std::unique_ptr<Communicator> backend;
  run_agreed(mpi, [&] {
    if (!flags.network.empty()) {
      const auto [alpha, beta] = two_numbers("network", flags.network, ',', "5e-6,1e-10");
      network.intra = {alpha, beta};
      network.describe = "given";
    } else if (flags.measure_network) {
      backend = make_backend(placement, mpi, config.distributed.collective_timeout);
    }
  }, "network agreement");
  Communicator& comm = backend ? *backend : mpi;
  // As in training, a collective that waits past --collective-timeout ends the job.
  const std::string gpu = placement.device == DeviceKind::Cuda ? "GPU " + std::to_string(placement.device_index) : "";
  const JobWatchdog::Attachment watched_backend(watchdog, comm, gpu);
  if (flags.measure_network) {
    run_agreed(mpi, [&] {
      std::vector<std::pair<double, double>> samples;
      for (int64_t bytes = 4096; bytes <= (int64_t{64} << 20); bytes *= 4) {
        samples.emplace_back(static_cast<double>(bytes), time_all_reduce(comm, bytes, 5, device));
      }
      network.intra = fit_ring(samples, mpi.world_size());
      char text[320];
      std::snprintf(text, sizeof text, "measured over %d ranks (%s, all-reduces of 4 KiB to 64 MiB): alpha %.3g s, "
                    "beta %.3g s/byte (%.3g GB/s)%s", mpi.world_size(), comm.backend_name(), network.intra.alpha,
                    network.intra.beta, network.intra.beta > 0 ? 1e-9 / network.intra.beta : INFINITY,
                    mpi.local_size() < mpi.world_size() ? ", across hosts: used within nodes too" : "");
      network.describe = text;
    }, "network-probe agreement");
  }
  run_agreed(mpi, [&] {
    network.inter = network.intra;
    if (!flags.network_inter.empty()) {
      const auto [alpha, beta] = two_numbers("network-inter", flags.network_inter, ',', "1e-5,2.5e-11");
      network.inter = {alpha, beta};
      network.describe += "; across nodes given";
    } else if (flags.max_ranks > flags.ranks_per_node) {
      network.describe += "; across nodes the same (no --network-inter)";
    }
    network.describe += "; " + std::to_string(network.ranks_per_node) + " ranks per node";
  }, "inter-node network agreement");
  // Overlap: where buckets start during backward (on every rank: they agree),
  // how much of a gradient's all-reduce hides behind a micro-step that
  // computes meanwhile, of as much as could hide (the shorter of the two).
  const auto overlapping = mpi.all_gather(static_cast<int64_t>(placement.overlap));
  const bool buckets_overlap = *std::min_element(overlapping.begin(), overlapping.end()) == 1;
  if (flags.overlap >= 0) {
    network.overlap = std::min(1.0, flags.overlap);
    network.describe += "; overlap " + std::to_string(network.overlap) + " given";
  } else if (!buckets_overlap || flags.max_ranks == 1 || !flags.measure_network) {
    network.overlap = 0;
    network.describe += buckets_overlap ? "; overlap not measured (0)" : "; no overlap (buckets after backward)";
  } else {
    // Every rank times a micro-step of rank 0's middle probed size.
    const auto sizes = mpi.all_gather(compute.micro_seconds.empty() ? 1 : compute.micro_seconds[compute.micro_seconds.size() / 2].first);
    const int64_t m0 = sizes[0];
    double alone = 0;
    run_agreed(mpi, [&] {
      if (!probe) probe = std::make_unique<Trainer>(config, derive_batch_plan(largest, 1, 0, 1), local, data, model);
      const std::optional<double> seconds = probe->time_micro_step(m0, 3);
      if (!seconds) throw Error("the overlap probe's micro-batch of " + std::to_string(m0) + " does not fit here");
      alone = *seconds;
    }, "overlap-probe agreement");
    double together = INFINITY, communication = INFINITY;
    run_agreed(mpi, [&] {
      auto tensor = torch::ones({std::max<int64_t>(1, static_cast<int64_t>(gradient_bytes / 4))},
                                torch::TensorOptions().dtype(torch::kFloat).device(device));
      auto wait_device = [&] {
        if (device.is_cuda()) torch::cuda::synchronize(device.index());
      };
      for (int repeat = 0; repeat < 3; ++repeat) {
        comm.barrier();
        auto start = std::chrono::steady_clock::now();
        comm.all_reduce(tensor);
        wait_device();
        communication = std::min(communication, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        comm.barrier();
        start = std::chrono::steady_clock::now();
        auto work = comm.all_reduce_async(tensor);
        probe->time_micro_step(m0, 1, /*warm_up=*/false);
        work->wait();
        wait_device();
        together = std::min(together, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
    }, "overlap agreement");
    const double hidden = alone + communication - together;
    const auto all = mpi.all_gather(static_cast<int64_t>(std::llround(1e6 * std::clamp(hidden / std::min(alone, communication), 0.0, 1.0))));
    network.overlap = 1e-6 * static_cast<double>(*std::min_element(all.begin(), all.end()));
    char text[160];
    std::snprintf(text, sizeof text, "; overlap %.2f measured (a micro-step of %lld with a gradient all-reduce)",
                  network.overlap, static_cast<long long>(m0));
    network.describe += text;
  }

  PlanRequest request;
  request.max_ranks = flags.max_ranks;
  request.deadline_seconds = flags.deadline;
  request.lr = config.lr;
  int rc = kExitCompleted;
  run_agreed(mpi, [&] {
    const auto [low, high] = two_numbers("batches", flags.batches, ':', "16:16384");
    request.batch_low = std::max<int64_t>(1, std::llround(low));
    if (high > 1e12) throw UsageError("--batches " + flags.batches + ": the largest global batch must be at most 1e12");
    request.batch_high = std::llround(high);
    if (!root) return;
    nlohmann::json plan = make_plan(steps, compute, network, gradient_bytes, request);
    plan["command"] = "dtrain plan";
    plan["world_size_measured"] = mpi.world_size();
    plan["threads_per_rank"] = threads.threads;
    std::filesystem::create_directories(flags.out);
    write_file_atomically(flags.out + "/plan.json", plan.dump(2) + "\n");
    std::cout << describe_plan(plan) << "plan: " << flags.out << "/plan.json\n" << std::flush;
  }, "plan agreement");
  return rc;
}

}  // namespace dtrain
