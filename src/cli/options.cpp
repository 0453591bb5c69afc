#include "cli/options.h"

#include "common/error.h"

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace po = boost::program_options;

namespace dtrain {

const char* to_string(LrScaling value) {
  switch (value) {
    case LrScaling::Linear: return "linear";
    case LrScaling::Sqrt: return "sqrt";
    case LrScaling::None: return "none";
  }
  return "?";
}
const char* to_string(LrScheduleKind value) {
  switch (value) {
    case LrScheduleKind::Constant: return "constant";
    case LrScheduleKind::Cosine: return "cosine";
    case LrScheduleKind::Linear: return "linear";
    case LrScheduleKind::Step: return "step";
  }
  return "?";
}
const char* to_string(OptimizerKind value) {
  return value == OptimizerKind::Sgd ? "sgd" : "adamw";
}
const char* to_string(DatasetKind value) {
  return value == DatasetKind::FashionMnist ? "fashion-mnist" : "synthetic";
}
const char* to_string(ModelKind value) { return value == ModelKind::Mlp ? "mlp" : "cnn"; }
const char* to_string(BackendKind value) {
  switch (value) {
    case BackendKind::Auto: return "auto";
    case BackendKind::Mpi: return "mpi";
    case BackendKind::Nccl: return "nccl";
  }
  return "?";
}
const char* to_string(DeviceKind value) {
  switch (value) {
    case DeviceKind::Auto: return "auto";
    case DeviceKind::Cpu: return "cpu";
    case DeviceKind::Cuda: return "cuda";
  }
  return "?";
}
const char* to_string(Switch value) {
  switch (value) {
    case Switch::Auto: return "auto";
    case Switch::On: return "true";
    case Switch::Off: return "false";
  }
  return "?";
}
const char* to_string(ReduceDtype value) {
  switch (value) {
    case ReduceDtype::Fp32: return "fp32";
    case ReduceDtype::Bf16: return "bf16";
    case ReduceDtype::Fp16: return "fp16";
  }
  return "?";
}

namespace {

// Maps a string option to an enum; the error lists the accepted values.
template <typename Enum>
Enum parse_choice(const std::string& option, const std::string& value,
                  std::initializer_list<Enum> choices) {
  std::string accepted;
  for (Enum choice : choices) {
    if (value == to_string(choice)) return choice;
    accepted += (accepted.empty() ? "" : "|") + std::string(to_string(choice));
  }
  throw UsageError("--" + option + " " + value + " is not one of " + accepted);
}

template <typename Number>
std::vector<Number> parse_list(const std::string& option, const std::string& text) {
  std::vector<Number> values;
  if (text.empty()) return values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    std::istringstream item_stream(item);
    Number value{};
    if (!(item_stream >> value) || !(item_stream >> std::ws).eof()) {
      throw UsageError("--" + option + " '" + text +
                       "' is not a comma-separated list of numbers (example: --" + option +
                       (std::is_integral_v<Number> ? " 512,256)" : " 0.9,0.999)"));
    }
    values.push_back(value);
  }
  return values;
}

template <typename Number>
std::string join(const std::vector<Number>& values) {
  std::ostringstream out;
  for (size_t i = 0; i < values.size(); ++i) out << (i ? "," : "") << values[i];
  return out.str();
}

// An option bound to `field` with a default shown as a person would write it
// (0.1 rather than 0.10000000000000001, true rather than 1).
template <typename T>
po::typed_value<T>* with_default(T* field, T value) {
  std::ostringstream text;
  text << std::boolalpha << value;
  return po::value(field)->default_value(value, text.str());
}

void require(bool condition, const std::string& message) {
  if (!condition) throw UsageError(message);
}

// Range checks that need only the options themselves. Batch sizes need the
// world size and are checked by derive_batch_plan.
void validate(const Config& c) {
  for (const auto& [name, value] :
       std::initializer_list<std::pair<const char*, double>>{{"--lr", c.lr.lr},
                                                             {"--warmup-epochs", c.lr.warmup_epochs},
                                                             {"--lr-gamma", c.lr.gamma},
                                                             {"--min-lr", c.lr.min_lr},
                                                             {"--momentum", c.optimizer.momentum},
                                                             {"--weight-decay", c.optimizer.weight_decay},
                                                             {"--eps", c.optimizer.eps},
                                                             {"--grad-clip-norm", c.optimizer.grad_clip_norm},
                                                             {"--bucket-cap-mb", c.distributed.bucket_cap_mb}}) {
    require(std::isfinite(value), std::string(name) + " must be a finite number");
  }
  for (double milestone : c.lr.milestones_epochs) require(std::isfinite(milestone), "--lr-milestones must be finite");
  require(c.lr.warmup_epochs <= 1e6 && c.distributed.bucket_cap_mb <= 1e6,
          "--warmup-epochs and --bucket-cap-mb must be at most 1e6");
  const auto& lr = c.lr;
  require(lr.lr > 0 && std::isfinite(lr.lr), "--lr must be positive (got " + std::to_string(lr.lr) + ")");
  require(lr.base_batch_size > 0, "--base-batch-size must be positive (got " +
                                      std::to_string(lr.base_batch_size) + ")");
  require(lr.warmup_steps >= 0, "--warmup-steps must be >= 0");
  require(lr.warmup_epochs >= 0, "--warmup-epochs must be >= 0");
  require(lr.warmup_steps == 0 || lr.warmup_epochs == 0,
          "give --warmup-steps or --warmup-epochs, not both");
  require(lr.min_lr >= 0, "--min-lr must be >= 0");
  require(lr.gamma > 0 && lr.gamma <= 1, "--lr-gamma must be in (0, 1]");
  for (size_t i = 0; i < lr.milestones_epochs.size(); ++i) {
    require(lr.milestones_epochs[i] > 0 && (i == 0 || lr.milestones_epochs[i] > lr.milestones_epochs[i - 1]),
            "--lr-milestones must be positive and increasing (epochs, e.g. 30,60,80)");
  }
  require(lr.schedule != LrScheduleKind::Step || !lr.milestones_epochs.empty(),
          "--schedule step needs --lr-milestones (epochs, e.g. 30,60,80)");

  const auto& opt = c.optimizer;
  require(opt.momentum >= 0 && opt.momentum < 1, "--momentum must be in [0, 1)");
  require(!opt.nesterov || opt.momentum > 0, "--nesterov true needs --momentum > 0");
  require(!opt.nesterov || opt.kind == OptimizerKind::Sgd, "--nesterov applies to --optimizer sgd only");
  require(opt.weight_decay >= 0, "--weight-decay must be >= 0");
  require(opt.beta1 >= 0 && opt.beta1 < 1 && opt.beta2 >= 0 && opt.beta2 < 1,
          "--betas must be two numbers in [0, 1), e.g. 0.9,0.999");
  require(opt.grad_clip_norm >= 0, "--grad-clip-norm must be >= 0 (0 disables clipping)");
  require(opt.eps > 0, "--eps must be positive");

  const auto& run = c.run;
  require(run.epochs >= 0, "--epochs must be >= 0");
  require(run.max_steps >= 0, "--max-steps must be >= 0 (0 means no limit)");
  require(run.log_every >= 1, "--log-every must be >= 1");
  require(run.eval_every >= 0, "--eval-every must be >= 0 (0: at the end of each epoch only)");
  require(run.threads >= 1 && run.threads <= 1024, "--threads must be between 1 and 1024");
  require(!run.out_dir.empty(), "--out-dir must not be empty");

  const auto& data = c.data;
  require(data.synthetic_train_samples > 0 && data.synthetic_test_samples > 0,
          "--synthetic-train-samples and --synthetic-test-samples must be positive");
  require(data.synthetic_classes >= 2, "--synthetic-classes must be >= 2");
  require(!c.model.hidden.empty() || c.model.kind == ModelKind::Cnn,
          "--hidden needs at least one width for --model mlp (e.g. --hidden 512,256)");
  for (int64_t width : c.model.hidden) require(width > 0, "--hidden widths must be positive");
  require(c.distributed.bucket_cap_mb > 0, "--bucket-cap-mb must be positive");
  require(!(c.distributed.backend == BackendKind::Nccl && c.distributed.device == DeviceKind::Cpu),
          "--backend nccl needs --device cuda (or auto)");
}

}  // namespace

ParsedOptions parse_options(const std::vector<std::string>& args) {
  ParsedOptions parsed;
  Config& c = parsed.config;
  const Config defaults;
  std::string lr_scaling = to_string(defaults.lr.scaling);
  std::string schedule = to_string(defaults.lr.schedule);
  std::string milestones;
  std::string optimizer = to_string(defaults.optimizer.kind);
  std::string betas = join(std::vector<double>{defaults.optimizer.beta1, defaults.optimizer.beta2});
  std::string dataset = to_string(defaults.data.dataset);
  std::string model = to_string(defaults.model.kind);
  std::string hidden = join(defaults.model.hidden);
  std::string backend = to_string(defaults.distributed.backend);
  std::string device = to_string(defaults.distributed.device);
  std::string reduce_dtype = to_string(defaults.distributed.grad_reduce_dtype);
  std::string overlap = to_string(defaults.distributed.overlap);

  po::options_description general("General");
  general.add_options()
    ("help,h", "print this help and exit")
    ("config", po::value(&c.config_file), "read options from this INI file (`name = value` lines); the command line wins");

  po::options_description batch("Batch (global = micro x accum x world; give any two)");
  batch.add_options()
    ("micro-batch-size", po::value<int64_t>(), "samples per rank per forward/backward pass")
    ("grad-accum-steps", po::value<int64_t>(), "micro-batches accumulated per optimizer step (default 1 unless derived)")
    ("global-batch-size", po::value<int64_t>(), "samples per optimizer step across all ranks");

  po::options_description lr("Learning rate");
  lr.add_options()
    ("lr", with_default(&c.lr.lr, defaults.lr.lr), "learning rate at the reference batch --base-batch-size")
    ("base-batch-size", with_default(&c.lr.base_batch_size, defaults.lr.base_batch_size), "reference batch of --lr")
    ("lr-scaling", po::value(&lr_scaling)->default_value(lr_scaling), "peak LR = lr x f(global/base): linear|sqrt|none")
    ("warmup-steps", with_default(&c.lr.warmup_steps, defaults.lr.warmup_steps), "optimizer steps of linear warmup from lr to the peak")
    ("warmup-epochs", with_default(&c.lr.warmup_epochs, defaults.lr.warmup_epochs), "warmup length in epochs (converted to steps)")
    ("schedule", po::value(&schedule)->default_value(schedule), "after warmup: constant|cosine|linear|step")
    ("lr-milestones", po::value(&milestones)->default_value(""), "step schedule: epochs at which the LR is multiplied by --lr-gamma (e.g. 30,60,80)")
    ("lr-gamma", with_default(&c.lr.gamma, defaults.lr.gamma), "step schedule decay factor")
    ("min-lr", with_default(&c.lr.min_lr, defaults.lr.min_lr), "final LR of the cosine and linear schedules");

  po::options_description opt("Optimizer");
  opt.add_options()
    ("optimizer", po::value(&optimizer)->default_value(optimizer), "sgd|adamw")
    ("momentum", with_default(&c.optimizer.momentum, defaults.optimizer.momentum), "SGD momentum")
    ("nesterov", with_default(&c.optimizer.nesterov, defaults.optimizer.nesterov), "SGD Nesterov momentum: true|false")
    ("weight-decay", with_default(&c.optimizer.weight_decay, defaults.optimizer.weight_decay), "L2 penalty (SGD) or decoupled weight decay (AdamW)")
    ("betas", po::value(&betas)->default_value(betas), "AdamW betas, two comma-separated numbers")
    ("eps", with_default(&c.optimizer.eps, defaults.optimizer.eps), "AdamW epsilon")
    ("grad-clip-norm", with_default(&c.optimizer.grad_clip_norm, defaults.optimizer.grad_clip_norm), "clip the global gradient norm to this (0: off)");

  po::options_description run("Run");
  run.add_options()
    ("epochs", with_default(&c.run.epochs, defaults.run.epochs), "passes over the training set")
    ("max-steps", with_default(&c.run.max_steps, defaults.run.max_steps), "stop after this many optimizer steps (0: no limit)")
    ("seed", with_default(&c.run.seed, defaults.run.seed), "seed of the initial weights and the sample order")
    ("shuffle", with_default(&c.run.shuffle, defaults.run.shuffle), "reshuffle the training set each epoch: true|false")
    ("out-dir", with_default(&c.run.out_dir, defaults.run.out_dir), "where rank 0 writes config.json, metrics.jsonl and summary.json")
    ("log-every", with_default(&c.run.log_every, defaults.run.log_every), "optimizer steps between progress lines and metrics records")
    ("eval-every", with_default(&c.run.eval_every, defaults.run.eval_every), "optimizer steps between evaluations (0: end of each epoch only)")
    ("threads", with_default(&c.run.threads, defaults.run.threads), "intra-op CPU threads per rank");

  po::options_description data("Data and model");
  data.add_options()
    ("dataset", po::value(&dataset)->default_value(dataset), "fashion-mnist|synthetic")
    ("data-dir", with_default(&c.data.data_dir, defaults.data.data_dir), "folder with Fashion-MNIST's *-ubyte.gz files")
    ("synthetic-train-samples", with_default(&c.data.synthetic_train_samples, defaults.data.synthetic_train_samples), "synthetic training set size")
    ("synthetic-test-samples", with_default(&c.data.synthetic_test_samples, defaults.data.synthetic_test_samples), "synthetic test set size")
    ("synthetic-classes", with_default(&c.data.synthetic_classes, defaults.data.synthetic_classes), "synthetic number of classes")
    ("synthetic-seed", with_default(&c.data.synthetic_seed, defaults.data.synthetic_seed), "seed of the synthetic inputs and teacher network")
    ("model", po::value(&model)->default_value(model), "mlp|cnn")
    ("hidden", po::value(&hidden)->default_value(hidden), "MLP hidden widths, comma-separated");

  po::options_description dist("Distributed");
  dist.add_options()
    ("backend", po::value(&backend)->default_value(backend), "collectives: auto|nccl|mpi (auto: NCCL on GPUs, MPI on CPUs)")
    ("device", po::value(&device)->default_value(device), "auto|cpu|cuda (cuda: the GPU of this rank's local rank)")
    ("bucket-cap-mb", with_default(&c.distributed.bucket_cap_mb, defaults.distributed.bucket_cap_mb), "gradient bucket size in MiB (the first bucket is at most 1 MiB)")
    ("overlap", po::value(&overlap)->default_value(overlap), "start each bucket's all-reduce during backward: auto|true|false (auto: on with NCCL; with MPI when every rank has a spare core)")
    ("grad-reduce-dtype", po::value(&reduce_dtype)->default_value(reduce_dtype), "all-reduce gradients as fp32|bf16|fp16 (accumulated back in fp32)");

  po::options_description weights("Weights");
  weights.add_options()
    ("init-from", po::value(&c.init_from), "start from these weights (dtrain --export output or PyTorch torch.save(state_dict))")
    ("export", po::value(&c.export_path), "write the final weights here (torch.load reads them as a name -> tensor dict)");

  po::options_description all("Usage: dtrain [--config FILE] [options]\n\nOptions");
  all.add(general).add(batch).add(lr).add(opt).add(run).add(data).add(dist).add(weights);

  po::variables_map vm;
  try {
    // Stored first, so it wins over the config file stored after it.
    // Stray words are collected into a hidden option so the error can name them.
    po::options_description parseable;
    parseable.add(all).add_options()("stray-argument", po::value<std::vector<std::string>>());
    po::positional_options_description positionals;
    positionals.add("stray-argument", -1);
    po::store(po::command_line_parser(args).options(parseable).positional(positionals).run(), vm);
    if (vm.count("stray-argument")) {
      throw UsageError("unexpected argument '" + vm["stray-argument"].as<std::vector<std::string>>().front() +
                       "'; options are --name value (see dtrain --help)");
    }
    if (vm.count("help")) {
      std::ostringstream help;
      help << all;
      parsed.help_requested = true;
      parsed.help_text = help.str();
      return parsed;
    }
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::ifstream file(path);
      if (!file || !std::filesystem::is_regular_file(path)) {
        throw UsageError("cannot open config file " + path + ": check the --config path");
      }
      po::store(po::parse_config_file(file, all, /*allow_unregistered=*/false), vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::string message = e.what();
    if (vm.count("config") && dynamic_cast<const po::unknown_option*>(&e)) {
      message += " (in the command line or " + vm["config"].as<std::string>() + ")";
    }
    throw UsageError(message + "; see dtrain --help");
  }

  auto optional_positive = [&](const char* name) -> int64_t {
    if (!vm.count(name)) return 0;
    const int64_t value = vm[name].as<int64_t>();
    require(value > 0, "--" + std::string(name) + " must be positive (got " + std::to_string(value) + ")");
    return value;
  };
  c.batch.micro_batch_size = optional_positive("micro-batch-size");
  c.batch.grad_accum_steps = optional_positive("grad-accum-steps");
  c.batch.global_batch_size = optional_positive("global-batch-size");

  c.lr.scaling = parse_choice("lr-scaling", lr_scaling, {LrScaling::Linear, LrScaling::Sqrt, LrScaling::None});
  c.lr.schedule = parse_choice("schedule", schedule,
                               {LrScheduleKind::Constant, LrScheduleKind::Cosine, LrScheduleKind::Linear, LrScheduleKind::Step});
  c.lr.milestones_epochs = parse_list<double>("lr-milestones", milestones);
  c.optimizer.kind = parse_choice("optimizer", optimizer, {OptimizerKind::Sgd, OptimizerKind::AdamW});
  const auto beta_values = parse_list<double>("betas", betas);
  require(beta_values.size() == 2, "--betas needs two numbers, e.g. 0.9,0.999");
  c.optimizer.beta1 = beta_values[0];
  c.optimizer.beta2 = beta_values[1];
  c.data.dataset = parse_choice("dataset", dataset, {DatasetKind::FashionMnist, DatasetKind::Synthetic});
  c.model.kind = parse_choice("model", model, {ModelKind::Mlp, ModelKind::Cnn});
  c.model.hidden = parse_list<int64_t>("hidden", hidden);
  c.distributed.backend = parse_choice("backend", backend, {BackendKind::Auto, BackendKind::Nccl, BackendKind::Mpi});
  c.distributed.device = parse_choice("device", device, {DeviceKind::Auto, DeviceKind::Cpu, DeviceKind::Cuda});
  c.distributed.overlap = parse_choice("overlap", overlap, {Switch::Auto, Switch::On, Switch::Off});
  c.distributed.grad_reduce_dtype =
      parse_choice("grad-reduce-dtype", reduce_dtype, {ReduceDtype::Fp32, ReduceDtype::Bf16, ReduceDtype::Fp16});
  validate(c);
  return parsed;
}

nlohmann::json config_to_json(const Config& c) {
  // Keys are the option names, so the printed config can be fed back.
  return nlohmann::json{
      {"micro-batch-size", c.batch.micro_batch_size},
      {"grad-accum-steps", c.batch.grad_accum_steps},
      {"global-batch-size", c.batch.global_batch_size},
      {"lr", c.lr.lr},
      {"base-batch-size", c.lr.base_batch_size},
      {"lr-scaling", to_string(c.lr.scaling)},
      {"warmup-steps", c.lr.warmup_steps},
      {"warmup-epochs", c.lr.warmup_epochs},
      {"schedule", to_string(c.lr.schedule)},
      {"lr-milestones", join(c.lr.milestones_epochs)},
      {"lr-gamma", c.lr.gamma},
      {"min-lr", c.lr.min_lr},
      {"optimizer", to_string(c.optimizer.kind)},
      {"momentum", c.optimizer.momentum},
      {"nesterov", c.optimizer.nesterov},
      {"weight-decay", c.optimizer.weight_decay},
      {"betas", join(std::vector<double>{c.optimizer.beta1, c.optimizer.beta2})},
      {"eps", c.optimizer.eps},
      {"grad-clip-norm", c.optimizer.grad_clip_norm},
      {"epochs", c.run.epochs},
      {"max-steps", c.run.max_steps},
      {"seed", c.run.seed},
      {"shuffle", c.run.shuffle},
      {"out-dir", c.run.out_dir},
      {"log-every", c.run.log_every},
      {"eval-every", c.run.eval_every},
      {"threads", c.run.threads},
      {"dataset", to_string(c.data.dataset)},
      {"data-dir", c.data.data_dir},
      {"synthetic-train-samples", c.data.synthetic_train_samples},
      {"synthetic-test-samples", c.data.synthetic_test_samples},
      {"synthetic-classes", c.data.synthetic_classes},
      {"synthetic-seed", c.data.synthetic_seed},
      {"model", to_string(c.model.kind)},
      {"hidden", join(c.model.hidden)},
      {"backend", to_string(c.distributed.backend)},
      {"device", to_string(c.distributed.device)},
      {"bucket-cap-mb", c.distributed.bucket_cap_mb},
      {"overlap", to_string(c.distributed.overlap)},
      {"grad-reduce-dtype", to_string(c.distributed.grad_reduce_dtype)},
      {"init-from", c.init_from},
      {"export", c.export_path},
  };
}

std::string config_to_ini(const Config& config) {
  std::ostringstream out;
  const nlohmann::json resolved = config_to_json(config);  // items() must not outlive it
  for (const auto& [name, value] : resolved.items()) {
    // Batch sizes of 0 were not given: they are derived, so leave them out.
    if (value.is_number_integer() && value.get<int64_t>() == 0 &&
        name.find("batch-size") != std::string::npos && name != "base-batch-size") {
      continue;
    }
    if (name == "grad-accum-steps" && value.get<int64_t>() == 0) continue;
    if (value.is_string() && value.get<std::string>().empty()) continue;
    out << name << " = " << (value.is_string() ? value.get<std::string>() : value.dump()) << "\n";
  }
  return out.str();
}

uint64_t config_hash(const Config& config) {
  uint64_t hash = 1469598103934665603ULL;
  for (unsigned char byte : config_to_json(config).dump()) {
    hash ^= byte;
    hash *= 1099511628211ULL;
  }
  return hash;
}

}  // namespace dtrain
