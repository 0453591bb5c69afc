// dtrain_gpu_step_split: where an optimizer step of the default job goes on
// one GPU. Proves that the step splits into its phases, each bracketed by a
// device synchronization so that each time is the phase's own: the batch
// (index and copy to the GPU), forward+backward, the gradient all-reduce (the
// reducer's finish()), the trainer's finiteness check and the optimizer step.
// Prints one JSON line, e.g.
//   {"device":"NVIDIA H100 80GB HBM3","micro":128,"accum":2,"steps":200,"ms_per_step":..,
//    "data_ms":..,"forward_backward_ms":..,"all_reduce_ms":..,"nonfinite_check_ms":..,
//    "optimizer_ms":..,"samples_per_sec":..,"trainer_ms_per_step":..,"nccl_all_reduce_ms":..}
// The phase times are means over the timed steps; ms_per_step and
// samples_per_sec are of the synchronized loop, trainer_ms_per_step of
// Trainer::train_step unsynchronized (what a run sees). At world size 1 the
// reducer has nothing to send, so nccl_all_reduce_ms also times one blocking
// NCCL all-reduce of the whole gradient (median): the fixed cost of a call.
//
// Model, optimizer, LR schedule and bucketing are the default job's
// (configs/fashion_mnist_mlp.ini, read by the project's option parser); the
// data is Fashion-MNIST from --data-dir, or else the synthetic set of the
// same shape; the split is micro 128 x accum 2 on GPU 0 through
// NcclCommunicator at world size 1 (bootstrapped without MPI). The phases are
// Trainer::train_step's (train/trainer.h steps 1-5), laid out one by one.
// With --config configs/gpt2_small.ini --data-file kjv.txt the same split is
// of the GPT (the kit's gpt_speed check), under the config's --precision:
// forward and loss in its autocast scope, the loss summed over target tokens,
// AdamW fused outside fp32 where LibTorch has it, as the trainer does.
// Without a GPU or NCCL in the build: prints {"skipped":"..."} and exits 77.
#include "cli/options.h"
#include "comm/communicator.h"
#include "comm/placement.h"
#include "common/error.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "models/models.h"
#include "models/precision.h"
#include "data/batch_plan.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "ddp/reducer.h"
#include "train/trainer.h"

#ifdef DTRAIN_HAVE_NCCL
#include "comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#endif

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace {

namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

struct Settings {
  std::string config;
  std::string data_dir;   // "": synthetic
  std::string data_file;  // a text file: --dataset text (the GPT configs)
  int64_t micro = 128;
  int64_t accum = 2;
  int64_t steps = 200;
  int64_t warmup = 20;
};

// The default job's file: as given, else relative to the working directory,
// else in the source tree this was built from.
std::string default_config() {
  const std::string relative = "configs/fashion_mnist_mlp.ini";
  if (std::filesystem::exists(relative)) return relative;
  return std::string(DTRAIN_SOURCE_DIR) + "/" + relative;
}

#ifdef DTRAIN_HAVE_NCCL

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// As the trainer's (train/trainer.cpp): the options' bucketing and wire.
dtrain::ReducerOptions reducer_options(const dtrain::DistributedOptions& options) {
  dtrain::ReducerOptions reducer;
  reducer.bucket_bytes = std::max<int64_t>(1, std::llround(options.bucket_cap_mb * 1024 * 1024));
  reducer.overlap = options.overlap != dtrain::Switch::Off;
  switch (options.grad_reduce_dtype) {
    case dtrain::ReduceDtype::Fp32: reducer.reduce_dtype = torch::kFloat; break;
    case dtrain::ReduceDtype::Bf16: reducer.reduce_dtype = torch::kBFloat16; break;
    case dtrain::ReduceDtype::Fp16: reducer.reduce_dtype = torch::kHalf; break;
  }
  return reducer;
}

std::string device_name(int device) {
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "GPU " + std::to_string(device);
  }
  return properties.name;
}

nlohmann::ordered_json measure(const Settings& settings) {
  using namespace dtrain;
  constexpr int kGpu = 0;
  const torch::Device device(torch::kCUDA, kGpu);
  std::vector<std::string> args = {"--config", settings.config, "--device", "cuda", "--backend", "nccl",
                                   "--micro-batch-size", std::to_string(settings.micro),
                                   "--grad-accum-steps", std::to_string(settings.accum)};
  if (!settings.data_file.empty()) {
    args.insert(args.end(), {"--dataset", "text", "--data-file", settings.data_file});
  } else if (settings.data_dir.empty()) {
    args.insert(args.end(), {"--dataset", "synthetic"});
  } else {
    args.insert(args.end(), {"--dataset", "fashion-mnist", "--data-dir", settings.data_dir});
  }
  Config config = parse_options(args).config;
  if (config.optimizer.eps == 0) config.optimizer.eps = default_eps(config.optimizer.kind);
  config.run.precision = resolve_precision(config.run.precision, device);
  set_tf32(config.run.precision);
  const bool fused = config.run.precision != Precision::Fp32 && fused_adamw_available();
  const Dataset data = load_dataset(config);

  LocalCommunicator bootstrap;  // a world of one needs no MPI
  NcclCommunicator nccl(bootstrap, kGpu);
  const BatchPlan plan = derive_batch_plan(settings.micro, settings.accum, 0, nccl.world_size());
  const int64_t steps_per_epoch = dtrain::steps_per_epoch(data.train.size(), plan);
  if (steps_per_epoch == 0) throw UsageError("the global batch " + std::to_string(plan.global_batch_size) +
                                             " exceeds the training set");
  const LrSchedule schedule =
      make_lr_schedule(config.lr, plan.global_batch_size, steps_per_epoch, config.run.epochs * steps_per_epoch);

  torch::manual_seed(config.run.seed);
  auto model = make_model(config.model, data.input_shape, data.num_classes);
  model->to(device);
  const NamedParameters named = named_trainable_parameters(*model);
  std::vector<torch::Tensor> parameters;
  for (const auto& item : named) parameters.push_back(item.second);
  GradientReducer reducer(parameters, nccl, reducer_options(config.distributed));
  auto optimizer = make_optimizer(config.optimizer, named, schedule.at(0), nullptr, fused);
  const bool check_finite = config.failure.on_nonfinite != NonFinitePolicy::Ignore;
  auto step_loss = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device));

  auto sync = [&] { torch::cuda::synchronize(kGpu); };
  double data_s = 0, forward_backward_s = 0, all_reduce_s = 0, nonfinite_s = 0, optimizer_s = 0;
  std::vector<int64_t> permutation;
  int64_t permutation_epoch = -1;
  Clock::time_point loop_start;
  const int64_t total = settings.warmup + settings.steps;
  for (int64_t step = 0; step < total; ++step) {
    sync();
    if (step == settings.warmup) {
      data_s = forward_backward_s = all_reduce_s = nonfinite_s = optimizer_s = 0;
      loop_start = Clock::now();
    }
    // The batch: as Trainer::train_step, every micro-batch before the first forward.
    auto start = Clock::now();
    const int64_t epoch = step / steps_per_epoch;
    if (epoch != permutation_epoch) {
      permutation = epoch_permutation(data.train.size(), config.run.seed, epoch, config.run.shuffle);
      permutation_epoch = epoch;
    }
    std::vector<std::pair<torch::Tensor, torch::Tensor>> micro_batches;
    double loss_items_per_step = 0;  // samples, or a text batch's target tokens
    for (int64_t micro_step = 0; micro_step < plan.grad_accum_steps; ++micro_step) {
      const auto indices = micro_batch_indices(permutation, plan, step % steps_per_epoch, micro_step, 0);
      const auto index_tensor = torch::tensor(indices, torch::kLong);
      loss_items_per_step += data.train.target_counts.defined()
                                 ? static_cast<double>(data.train.target_counts.index_select(0, index_tensor)
                                                           .sum()
                                                           .item<int64_t>())
                                 : static_cast<double>(indices.size());
      micro_batches.emplace_back(data.train.inputs.index_select(0, index_tensor).to(device),
                                 data.train.targets.index_select(0, index_tensor).to(device));
    }
    sync();
    data_s += seconds_since(start);

    start = Clock::now();
    model->train();
    reducer.zero_grad();
    step_loss.zero_();
    for (int64_t micro_step = 0; micro_step < plan.grad_accum_steps; ++micro_step) {
      reducer.begin_micro_step(micro_step == plan.grad_accum_steps - 1);
      const auto& [inputs, targets] = micro_batches[micro_step];
      torch::Tensor loss;
      {
        const PrecisionScope precision(config.run.precision, device.type());
        loss = summed_cross_entropy(model->forward(inputs), targets) / loss_items_per_step;
      }
      loss.backward();
      step_loss += loss.detach().to(torch::kDouble);
    }
    sync();
    forward_backward_s += seconds_since(start);

    start = Clock::now();
    reducer.finish();
    sync();
    all_reduce_s += seconds_since(start);

    start = Clock::now();
    if (check_finite && !reducer.all_finite()) throw Error("non-finite gradient at step " + std::to_string(step));
    sync();
    nonfinite_s += seconds_since(start);

    start = Clock::now();
    const double clip = config.optimizer.grad_clip_norm;
    if (clip > 0) {
      const double norm = reducer.grad_norm();
      if (norm > clip) reducer.scale(clip / (norm + 1e-6));
    }
    for (auto& group : optimizer->param_groups()) group.options().set_lr(schedule.at(step));
    optimizer->step();
    sync();
    optimizer_s += seconds_since(start);
  }
  sync();
  const double loop_s = seconds_since(loop_start);
  const double steps = static_cast<double>(settings.steps);
  const double final_loss = step_loss.item<double>();

  // The trainer itself, unsynchronized between steps: what a run sees.
  torch::manual_seed(config.run.seed);
  auto trainer_model = make_model(config.model, data.input_shape, data.num_classes);
  trainer_model->to(device);
  Trainer trainer(config, plan, nccl, bootstrap, data, trainer_model);
  for (int64_t step = 0; step < settings.warmup; ++step) trainer.train_step(step);
  sync();
  auto start = Clock::now();
  for (int64_t step = settings.warmup; step < total; ++step) trainer.train_step(step);
  sync();
  const double trainer_s = seconds_since(start);

  // One blocking NCCL all-reduce of the gradient's bytes: the fixed cost.
  auto gradient = torch::ones({reducer.bytes() / 4}, torch::TensorOptions().device(device));
  std::vector<double> call_s;
  for (int call = 0; call < 55; ++call) {
    sync();
    start = Clock::now();
    nccl.all_reduce(gradient);
    sync();
    if (call >= 5) call_s.push_back(seconds_since(start));
  }
  std::sort(call_s.begin(), call_s.end());

  return {{"device", device_name(kGpu)},
          {"micro", plan.micro_batch_size},
          {"accum", plan.grad_accum_steps},
          {"world_size", plan.world_size},
          {"global_batch", plan.global_batch_size},
          {"dataset", data.name},
          {"hidden", config.model.hidden},
          {"optimizer", to_string(config.optimizer.kind)},
          {"model", to_string(config.model.kind)},
          {"precision", to_string(config.run.precision)},
          {"fused_adamw", fused},
          {"tokens_per_sec", data.train.target_counts.defined()
                                 ? nlohmann::json(steps * static_cast<double>(plan.global_batch_size) *
                                                  static_cast<double>(data.train.inputs.size(1)) / loop_s)
                                 : nlohmann::json(nullptr)},
          {"steps", settings.steps},
          {"warmup_steps", settings.warmup},
          {"ms_per_step", 1000 * loop_s / steps},
          {"data_ms", 1000 * data_s / steps},
          {"forward_backward_ms", 1000 * forward_backward_s / steps},
          {"all_reduce_ms", 1000 * all_reduce_s / steps},
          {"nonfinite_check_ms", 1000 * nonfinite_s / steps},
          {"optimizer_ms", 1000 * optimizer_s / steps},
          {"samples_per_sec", steps * static_cast<double>(plan.global_batch_size) / loop_s},
          {"trainer_ms_per_step", 1000 * trainer_s / steps},
          {"trainer_samples_per_sec", steps * static_cast<double>(plan.global_batch_size) / trainer_s},
          {"buckets", reducer.num_buckets()},
          {"gradient_bytes", reducer.bytes()},
          {"nccl_all_reduce_ms", 1000 * call_s[call_s.size() / 2]},
          {"last_loss", final_loss}};
}

#endif  // DTRAIN_HAVE_NCCL

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  po::options_description options("dtrain_gpu_step_split options");
  options.add_options()("help", "this text")(
      "config", po::value(&settings.config)->default_value(default_config()), "the job's INI file")(
      "data-dir", po::value(&settings.data_dir), "Fashion-MNIST's folder (default: synthetic data of its shape)")(
      "data-file", po::value(&settings.data_file), "a text file, one document a line (--dataset text: the GPT)")(
      "micro", po::value(&settings.micro)->default_value(settings.micro), "micro-batch size")(
      "accum", po::value(&settings.accum)->default_value(settings.accum), "gradient accumulation steps")(
      "steps", po::value(&settings.steps)->default_value(settings.steps), "timed optimizer steps")(
      "warmup", po::value(&settings.warmup)->default_value(settings.warmup), "untimed steps first");
  try {
    po::variables_map values;
    po::store(po::parse_command_line(argc, argv, options), values);
    po::notify(values);
    if (values.count("help")) {
      std::cout << options << "\n";
      return 0;
    }
    if (settings.steps < 1 || settings.warmup < 0) throw dtrain::UsageError("--steps must be >= 1, --warmup >= 0");
  } catch (const std::exception& e) {
    std::cerr << "dtrain_gpu_step_split: " << e.what() << "\n";
    return 2;
  }
#ifdef DTRAIN_HAVE_NCCL
  if (dtrain::usable_gpu_count() == 0) {
    std::cout << nlohmann::json{{"skipped", "LibTorch sees no GPU"}}.dump() << std::endl;
    return 77;
  }
  try {
    std::cout << measure(settings).dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "dtrain_gpu_step_split: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
#else
  std::cout << nlohmann::json{{"skipped", "this build has no NCCL"}}.dump() << std::endl;
  return 77;
#endif
}
