// dtrain_bench: the measurements behind docs/performance.md that need code
// of their own. bench/run_bench.py runs them (and dtrain, and PyTorch DDP)
// side by side and prints the tables. Each mode prints one JSON line.
//
//   dtrain_bench allreduce --mb 1,4,16,64 --iters 20   (under mpirun)
//       raw MPI_Allreduce vs Communicator::all_reduce vs the bucketed reducer
//       on the same bytes, interleaved; seconds per call (median).
//   dtrain_bench loop --hidden 1024,1024 --micro 64 --steps 200 [--data synthetic]
//       a bare LibTorch training loop (no dtrain pieces) on Fashion-MNIST:
//       steady ms/step and samples/s.
//   dtrain_bench gpt_loop --config configs/kjv_gpt.ini --micro 64 --steps 150
//       the same for the GPT: the config's model and text rows, AdamW and
//       clipping as dtrain, the loss averaged over the batch's target tokens.
//   dtrain_bench traffic --accum 1,8        (under mpirun)
//       bytes and calls per optimizer step from the communicator's counters.
//   dtrain_bench checkpoint --hidden 5000,4000 --repeats 5 --dir runs/bench/checkpoint
//       write_checkpoint of an MLP (~96 MB of parameters) and its SGD momentum
//       against cp -r of the same files (with and without sync), interleaved.
#include "cli/options.h"
#include "common/error.h"
#include "comm/mpi_communicator.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "data/text_dataset.h"
#include "models/models.h"
#include "io/files.h"
#include "run/checkpoint.h"
#include "optim/optimizer.h"
#include "ddp/reducer.h"
#include "train/trainer.h"

#include <nlohmann/json.hpp>
#include <zlib.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <cstdlib>
#include <map>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// --name value pairs after the mode.
std::map<std::string, std::string> flags(int argc, char** argv) {
  std::map<std::string, std::string> result;
  for (int i = 2; i + 1 < argc; i += 2) result[std::string(argv[i]).substr(2)] = argv[i + 1];
  return result;
}

std::vector<int64_t> int_list(const std::string& text) {
  std::vector<int64_t> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) values.push_back(std::stoll(item));
  return values;
}

std::string get(const std::map<std::string, std::string>& f, const std::string& key, const std::string& fallback) {
  auto it = f.find(key);
  return it == f.end() ? fallback : it->second;
}

// Raw MPI vs our paths on the same float buffer size. Variants are
// interleaved within each iteration so machine noise hits all alike.
nlohmann::json bench_allreduce(dtrain::MpiCommunicator& comm, const std::map<std::string, std::string>& f) {
  const int iters = std::stoi(get(f, "iters", "20"));
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t mb : int_list(get(f, "mb", "1,4,16,64"))) {
    const int64_t numel = mb * 1024 * 1024 / 4;
    auto raw = torch::ones({numel});
    auto ours = torch::ones({numel});
    // The reducer path: a fake model of 4 parameters totalling `mb`, in 25 MiB buckets.
    std::vector<torch::Tensor> parameters;
    for (int i = 0; i < 4; ++i) parameters.push_back(torch::zeros({numel / 4}, torch::requires_grad()));
    dtrain::GradientReducer reducer(parameters, comm, {1 << 20, 25 << 20, false, torch::kFloat});
    std::vector<double> raw_s, comm_s, reducer_s;
    for (int it = 0; it < iters + 2; ++it) {
      comm.barrier();
      auto start = Clock::now();
      MPI_Allreduce(MPI_IN_PLACE, raw.data_ptr(), static_cast<int>(numel), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      const double t_raw = seconds_since(start);
      comm.barrier();
      start = Clock::now();
      comm.all_reduce(ours);
      const double t_comm = seconds_since(start);
      comm.barrier();
      start = Clock::now();
      reducer.begin_micro_step(true);
      reducer.finish();
      const double t_reducer = seconds_since(start);
      if (it >= 2) {  // the first two warm up buffers and connections
        raw_s.push_back(t_raw);
        comm_s.push_back(t_comm);
        reducer_s.push_back(t_reducer);
      }
      raw.fill_(1);
      ours.fill_(1);
    }
    rows.push_back({{"mb", mb},
                    {"raw_mpi_s", median(raw_s)},
                    {"communicator_s", median(comm_s)},
                    {"reducer_s", median(reducer_s)},
                    {"reducer_buckets", reducer.num_buckets()}});
  }
  return {{"mode", "allreduce"}, {"world_size", comm.world_size()}, {"rows", rows}};
}

// The same model, data and optimizer as dtrain at world size 1, in the
// plainest LibTorch loop: a fresh permutation each epoch, index_select of the
// micro-batch, forward, mean loss, backward, SGD::step. Steady ms/step: the
// first 20 steps (allocator and cache warm-up) are not timed, as in dtrain's
// summary.json steady_ms_per_step.
nlohmann::json bench_loop(const std::map<std::string, std::string>& f) {
  torch::set_num_threads(std::stoi(get(f, "threads", "1")));
  const int64_t micro = std::stoll(get(f, "micro", "64"));
  const int steps = std::stoi(get(f, "steps", "200"));
  dtrain::ModelOptions options;
  options.hidden = int_list(get(f, "hidden", "1024,1024"));
  torch::manual_seed(0);
  auto model = dtrain::make_model(options, {1, 28, 28}, 10);
  dtrain::Config data_config;
  if (get(f, "data", "fashion-mnist") == "synthetic") data_config.data.dataset = dtrain::DatasetKind::Synthetic;
  const auto data = dtrain::load_dataset(data_config);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(std::stod(get(f, "lr", "0.01"))).momentum(0.9));
  const int64_t n = data.train.size();
  const int64_t steps_per_epoch = n / micro;
  constexpr int kWarmup = 20;
  torch::Tensor permutation;
  auto start = Clock::now();
  for (int step = 0; step < kWarmup + steps; ++step) {
    if (step == kWarmup) start = Clock::now();
    if (step % steps_per_epoch == 0) permutation = torch::randperm(n, torch::kLong);
    const auto indices = permutation.narrow(0, (step % steps_per_epoch) * micro, micro);
    const auto inputs = data.train.inputs.index_select(0, indices);
    const auto targets = data.train.targets.index_select(0, indices);
    optimizer.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(inputs), targets).backward();
    optimizer.step();
  }
  const double seconds = seconds_since(start);
  return {{"mode", "loop"},
          {"samples_per_sec", steps * micro / seconds},
          {"ms_per_step", 1000 * seconds / steps},
          {"seconds", seconds}};
}

// Bytes and calls per optimizer step from the communicator's counters.
// The GPT of `config`, in the plainest loop: AdamW (the config's lr and
// weight decay), clip_grad_norm_, the token-mean loss of one batch of `micro`
// rows; a fresh permutation each epoch; steady ms/step after 20 steps.
nlohmann::json bench_gpt_loop(const std::map<std::string, std::string>& f) {
  torch::set_num_threads(std::stoi(get(f, "threads", "1")));
  const int64_t micro = std::stoll(get(f, "micro", "64"));
  const int steps = std::stoi(get(f, "steps", "150"));
  const dtrain::Config config =
      dtrain::parse_options({"--config", get(f, "config", "configs/kjv_gpt.ini"), "--pack", get(f, "pack", "false")}).config;
  const auto data = dtrain::load_dataset(config);
  torch::manual_seed(0);
  auto model = dtrain::make_model(config.model, data.input_shape, data.num_classes);
  const auto parameters = dtrain::trainable_parameters(*model);  // the tied weight once
  torch::optim::AdamW optimizer(parameters,
                                torch::optim::AdamWOptions(config.lr.lr).weight_decay(config.optimizer.weight_decay));
  const int64_t n = data.train.size();
  const int64_t steps_per_epoch = n / micro;
  constexpr int kWarmup = 20;
  torch::Tensor permutation;
  double tokens = 0;
  auto start = Clock::now();
  for (int step = 0; step < kWarmup + steps; ++step) {
    if (step == kWarmup) {
      start = Clock::now();
      tokens = 0;
    }
    if (step % steps_per_epoch == 0) permutation = torch::randperm(n, torch::kLong);
    const auto indices = permutation.narrow(0, (step % steps_per_epoch) * micro, micro);
    const auto targets = data.train.targets.index_select(0, indices);
    const auto logits = model->forward(data.train.inputs.index_select(0, indices));
    const double count = static_cast<double>(data.train.target_counts.index_select(0, indices).sum().item<int64_t>());
    optimizer.zero_grad();
    (torch::nn::functional::cross_entropy(
         logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
         torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(-1)) /
     count)
        .backward();
    torch::nn::utils::clip_grad_norm_(parameters, config.optimizer.grad_clip_norm);
    optimizer.step();
    tokens += count;
  }
  const double seconds = seconds_since(start);
  return {{"mode", "gpt_loop"}, {"tokens_per_sec", tokens / seconds}, {"ms_per_step", 1000 * seconds / steps}};
}

nlohmann::json bench_traffic(dtrain::MpiCommunicator& comm, const std::map<std::string, std::string>& f) {
  nlohmann::json rows = nlohmann::json::array();
  const auto data = dtrain::make_synthetic(8192, 64, 10, 1);
  for (int64_t accum : int_list(get(f, "accum", "1,8"))) {
    dtrain::Config config = dtrain::parse_options({"--dataset", "synthetic", "--hidden", get(f, "hidden", "1024,1024"),
                                                   "--bucket-cap-mb", get(f, "bucket-cap-mb", "25")})
                                .config;
    const auto plan = dtrain::derive_batch_plan(64, accum, 0, comm.world_size());
    torch::manual_seed(0);
    auto model = dtrain::make_model(config.model, data.input_shape, data.num_classes);
    int64_t parameter_bytes = 0;
    for (const auto& p : model->parameters()) parameter_bytes += p.numel() * 4;
    dtrain::Trainer trainer(config, plan, comm, comm, data, model);
    comm.reset_stats();
    const int steps = 5;
    for (int step = 0; step < steps; ++step) trainer.train_step(step);
    rows.push_back({{"accum", accum},
                    {"bytes_per_step", comm.stats().all_reduce_bytes / steps},
                    {"calls_per_step", comm.stats().all_reduce_calls / steps},
                    {"buckets", trainer.reducer().num_buckets()},
                    {"parameter_bytes", parameter_bytes}});
  }
  return {{"mode", "traffic"}, {"rows", rows}};
}

nlohmann::json bench_checkpoint(const std::map<std::string, std::string>& f) {
  const std::string dir = get(f, "dir", "runs/bench/checkpoint");
  const int repeats = std::stoi(get(f, "repeats", "5"));
  dtrain::Config config = dtrain::parse_options({"--hidden", get(f, "hidden", "5000,4000")}).config;
  torch::manual_seed(0);
  auto model = dtrain::make_model(config.model, {1, 28, 28}, 10);
  const auto named = dtrain::named_trainable_parameters(*model);
  auto optimizer = dtrain::make_optimizer(config.optimizer, named, 0.1);
  for (const auto& item : named) item.second.mutable_grad() = torch::randn_like(item.second);
  optimizer->step();  // momentum buffers exist now
  dtrain::Checkpoint checkpoint;
  checkpoint.model = dtrain::model_state(*model);
  checkpoint.optimizer = dtrain::optimizer_state(*optimizer, config.optimizer, named);
  checkpoint.trainer = {{"step", 1}, {"options", nlohmann::json::object()}, {"world_size", 1}};
  int64_t parameter_bytes = 0;
  for (const auto& item : named) parameter_bytes += item.second.numel() * 4;
  auto shell = [](const std::string& command) {
    if (std::system(command.c_str()) != 0) throw dtrain::Error("bench: failed: " + command);
  };
  shell("rm -rf '" + dir + "' && mkdir -p '" + dir + "'");
  std::vector<double> write, copy, copy_sync;
  int64_t bytes = 0;
  for (int r = 0; r < repeats; ++r) {
    auto start = Clock::now();
    // Every checkpoint kept: deleting the previous one is timed on neither side.
    const auto written = dtrain::write_checkpoint(dir + "/ck", r + 1, checkpoint, repeats + 1);
    write.push_back(seconds_since(start));
    bytes = written.bytes;
    shell("rm -rf '" + dir + "/cp' '" + dir + "/cp2'");
    start = Clock::now();
    shell("cp -r '" + written.path + "' '" + dir + "/cp'");
    copy.push_back(seconds_since(start));
    start = Clock::now();
    shell("cp -r '" + written.path + "' '" + dir + "/cp2' && sync '" + dir + "/cp2'/*");
    copy_sync.push_back(seconds_since(start));
  }
  shell("rm -rf '" + dir + "'");
  // For comparison, measured alone: LibTorch's pickle_save of both files
  // (the old path; CRC-32 included), and over the same bytes each check a
  // write makes or made: SHA-256 (before 2026-12), XXH3-128, zlib's and
  // libdeflate's CRC-32.
  std::vector<double> serialize, sha256, xxh3, crc_zlib, crc_deflate;
  for (int r = 0; r < repeats; ++r) {
    auto start = Clock::now();
    const auto model_bytes = dtrain::serialize_weights(checkpoint.model);
    const auto optimizer_bytes = dtrain::serialize_weights(checkpoint.optimizer);
    serialize.push_back(seconds_since(start));
    auto time_both = [&](std::vector<double>& samples, auto&& check) {
      const auto begin = Clock::now();
      check(model_bytes.data(), model_bytes.size());
      check(optimizer_bytes.data(), optimizer_bytes.size());
      samples.push_back(seconds_since(begin));
    };
    time_both(sha256, [](const char* data, size_t size) { dtrain::sha256_hex(data, size); });
    time_both(xxh3, [](const char* data, size_t size) { dtrain::xxh3_128_hex(data, size); });
    time_both(crc_zlib,
              [](const char* data, size_t size) { crc32_z(0L, reinterpret_cast<const Bytef*>(data), size); });
    time_both(crc_deflate, [](const char* data, size_t size) { dtrain::crc32_of(data, size); });
  }
  return {{"mode", "checkpoint"},        {"serialize_s", median(serialize)}, {"sha256_s", median(sha256)},
          {"xxh3_s", median(xxh3)},      {"crc32_zlib_s", median(crc_zlib)}, {"crc32_libdeflate_s", median(crc_deflate)},
          {"parameter_bytes", parameter_bytes}, {"checkpoint_bytes", bytes},
          {"write_s", median(write)},  {"cp_s", median(copy)},               {"cp_sync_s", median(copy_sync)},
          {"write_samples", write},    {"cp_samples", copy},                 {"cp_sync_samples", copy_sync}};
}

// The KJV's training and held-out verses as dtrain splits them (the
// documents of --dataset kjv; validation_indices of --validation-size and
// --seed), written as JSON to --out for the PyTorch peer of
// bench/lm_peer.py (run_bench.py --only lm) to train and score on the same verses.
nlohmann::json bench_kjv_split(const std::map<std::string, std::string>& f) {
  const auto documents = dtrain::kjv_documents();
  const int64_t total = static_cast<int64_t>(documents.size());
  const auto held_out = dtrain::validation_indices(total, std::stoll(get(f, "validation-size", "1000")),
                                                   std::stoull(get(f, "seed", "0")));
  nlohmann::json split = {{"train", nlohmann::json::array()}, {"validation", nlohmann::json::array()}};
  size_t next = 0;
  for (int64_t i = 0; i < total; ++i) {
    const bool validation = next < held_out.size() && held_out[next] == i;
    if (validation) ++next;
    split[validation ? "validation" : "train"].push_back(documents[static_cast<size_t>(i)]);
  }
  dtrain::write_file_atomically(get(f, "out", "kjv_split.json"), split.dump());
  return {{"documents", total}, {"validation", held_out.size()}, {"out", get(f, "out", "kjv_split.json")}};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: dtrain_bench allreduce|loop|gpt_loop|traffic|checkpoint|kjv_split [--name value ...]\n";
    return 2;
  }
  const std::string mode = argv[1];
  const auto f = flags(argc, argv);
  dtrain::MpiSession mpi(&argc, &argv);
  dtrain::MpiCommunicator comm;
  try {
    nlohmann::json result;
    if (mode == "allreduce") result = bench_allreduce(comm, f);
    else if (mode == "loop") result = bench_loop(f);
    else if (mode == "gpt_loop") result = bench_gpt_loop(f);
    else if (mode == "traffic") result = bench_traffic(comm, f);
    else if (mode == "checkpoint") result = bench_checkpoint(f);
    else if (mode == "kjv_split") result = bench_kjv_split(f);
    else throw dtrain::UsageError("unknown mode " + mode + " (allreduce|loop|gpt_loop|traffic|checkpoint|kjv_split)");
    if (comm.rank() == 0) std::cout << result.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "dtrain_bench: error: " << e.what() << "\n";
    if (comm.world_size() > 1) dtrain::MpiSession::abort_world(1);
    return 1;
  }
  return 0;
}
