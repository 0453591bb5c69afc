// The typed, validated configuration of one run. Filled once by parse_options
// (cli/options.h); nothing else reads raw option strings. A field's default is
// its initializer here; its name, help, parsing, range check and effect class
// are its one row in the option table (cli/option_table.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dtrain {

enum class LrScaling { Linear, Sqrt, None };
enum class LrScheduleKind { Constant, Cosine, Linear, Step };
enum class OptimizerKind { Sgd, AdamW, Lars, Lamb };
enum class DatasetKind { FashionMnist, Synthetic, Kjv, Text };
enum class ModelKind { Mlp, Cnn, SimpleCnn, Gpt };
enum class BackendKind { Auto, Mpi, Nccl };
enum class DeviceKind { Auto, Cpu, Cuda };
enum class ReduceDtype { Fp32, Bf16, Fp16 };
enum class Switch { Auto, On, Off };
// --activation-checkpointing: blocks recomputes each transformer block in
// backward (models/gpt.h; --model gpt only); auto is for --micro-batch-size
// auto to choose, and means none wherever nothing has chosen.
enum class ActivationCheckpointing { None, Blocks, Auto };
enum class NonFinitePolicy { Stop, Skip, Ignore };
// --precision (models/precision.h): fp32 (TF32 off), tf32 (TF32 on in cuBLAS
// and cuDNN), bf16-mixed (forward and loss under autocast to bfloat16;
// parameters, gradients and optimizer state stay fp32), or auto (bf16-mixed
// on a GPU with bf16 tensor cores, else fp32; resolved at start-up).
enum class Precision { Fp32, Tf32, Bf16Mixed, Auto };

// --micro-batch-size auto: the largest that fits the memory budget.
constexpr int64_t kAutoMicroBatch = -1;

// --batch-schedule (data/batch_schedule.h): the global batch over the run.
// constant: --global-batch-size throughout; rampup:START:INCREMENT:SAMPLES
// (Megatron's --rampup-batch-size): START, plus INCREMENT each time another
// SAMPLES / ((G - START) / INCREMENT) samples are consumed, up to G;
// adaptive[:START]: from START (default the smallest allowed batch), grown at
// evaluations toward --adaptive-batch-factor x the online B_simple, capped
// by G, never shrunk.
enum class BatchScheduleKind { Constant, Rampup, Adaptive };
struct BatchSchedulePlan {
  BatchScheduleKind kind = BatchScheduleKind::Constant;
  int64_t start = 0;      // rampup, adaptive (0: the smallest allowed)
  int64_t increment = 0;  // rampup
  int64_t samples = 0;    // rampup: samples over which the batch reaches G
};
// --batch-schedule-lr: scale (the LR follows --lr-scaling at each batch) or
// fixed (the LR scheduled for the final batch throughout, as Megatron does).
enum class BatchScheduleLr { Scale, Fixed };
// Which splits an evaluation before the last reads (--eval-splits).
enum class EvalSplits { All, Target };

struct BatchOptions {
  // 0 means "not given": derive it from the other two (data/batch_plan.h).
  int64_t micro_batch_size = 0;  // or kAutoMicroBatch
  int64_t grad_accum_steps = 0;
  int64_t global_batch_size = 0;
  // Bytes one rank's training step may use (memory/memory.h); 0 = not given:
  // on CUDA the free device memory less a margin, on CPU no limit.
  int64_t memory_budget = 0;
  BatchSchedulePlan schedule;
  BatchScheduleLr schedule_lr = BatchScheduleLr::Scale;
  double adaptive_factor = 1.0;  // --adaptive-batch-factor
};

struct LrOptions {
  double lr = 0.1;               // LR at the reference batch
  int64_t base_batch_size = 256;  // the reference batch
  LrScaling scaling = LrScaling::Linear;
  int64_t warmup_steps = 0;
  double warmup_epochs = 0;
  LrScheduleKind schedule = LrScheduleKind::Constant;
  std::vector<double> milestones_epochs;  // step schedule
  double gamma = 0.1;
  double min_lr = 0;
};

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::Sgd;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0;
  std::vector<double> betas = {0.9, 0.999};  // AdamW (beta1, beta2)
  double eps = 0;                  // AdamW and LAMB; 0: auto (1e-8 for AdamW, 1e-6 for LAMB), resolved at start-up
  double trust_coefficient = 0.001;  // LARS eta
  double grad_clip_norm = 0;  // 0: no clipping
};

struct RunOptions {
  int64_t epochs = 1;
  int64_t max_steps = 0;  // stop after this many steps (0: no limit); the schedule's horizon is --epochs
  uint64_t seed = 0;
  bool shuffle = true;
  std::string out_dir = "runs/latest";
  int64_t log_every = 50;
  int64_t eval_every = 0;  // 0: evaluate at the end of each epoch only
  int threads = 0;  // intra-op threads per rank; 0: auto (comm/cpu_share.h)
  Precision precision = Precision::Fp32;
};

struct DataOptions {
  DatasetKind dataset = DatasetKind::FashionMnist;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int64_t synthetic_train_samples = 8192;
  int64_t synthetic_test_samples = 2048;
  int64_t synthetic_classes = 10;
  uint64_t synthetic_seed = 1;
  // Training samples held out as a validation split (chosen by --seed); 0: none.
  // For text datasets: whole documents.
  int64_t validation_size = 0;
  std::string data_file;  // --dataset text: one document per line
  bool pack = false;      // text datasets: concatenate documents into full rows
};

struct ModelOptions {
  ModelKind kind = ModelKind::Mlp;
  std::vector<int64_t> hidden = {512, 256};
  // --model gpt (models/gpt.h); block_size is also the text datasets' row length.
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t n_embd = 128;
  int64_t block_size = 128;
  ActivationCheckpointing activation_checkpointing = ActivationCheckpointing::None;
};

struct DistributedOptions {
  BackendKind backend = BackendKind::Auto;  // auto: NCCL on GPUs, MPI on CPUs
  DeviceKind device = DeviceKind::Auto;     // auto: the GPU of our local rank if any, else CPU
  double bucket_cap_mb = 25;                // gradient bucket size (the first is min(1 MiB, this))
  // Start bucket all-reduces during backward. Auto: on with NCCL, and with
  // MPI when each rank has a spare core for its communication thread
  // (resolved at start-up by choose_placement).
  Switch overlap = Switch::Auto;
  ReduceDtype grad_reduce_dtype = ReduceDtype::Fp32;
  // ZeRO-1 (ddp/reducer.h): each rank keeps the optimizer state of its slice
  // of every bucket. Auto: on when world > 1 and the optimizer keeps state.
  Switch shard_optimizer_state = Switch::Off;
  double collective_timeout = 600;  // seconds a collective may take before the job is aborted (comm/watchdog.h); 0: never
};

// A metric and the value a run must reach (--target METRIC:VALUE).
struct Target {
  std::string metric;  // "" = no target; else val_accuracy, val_loss, test_accuracy, test_loss, train_accuracy, train_loss
  double value = 0;
  bool lower_is_better() const { return metric.size() > 5 && metric.compare(metric.size() - 5, 5, "_loss") == 0; }
};

// Batch-size study measurements (docs/studies.md): targets, evaluation
// resolution, the gradient noise scale (run/noise_scale.h).
struct StudyOptions {
  Target target;
  bool stop_at_target = false;
  int64_t eval_per_doubling = 0;  // --eval-schedule geometric:K (0: fixed, --eval-every and epoch ends)
  EvalSplits eval_splits = EvalSplits::All;  // target: only --target's split until the final evaluation
  bool noise_scale = false;
  double noise_scale_ema = 0.99;
  int64_t measure_noise_scale = 0;  // steps of a measurement at fixed weights (0: train)
  int64_t measure_sharpness = 0;    // training samples of a sharpness measurement at fixed weights (0: train)
  int64_t sharpness_at_end = 0;     // training samples of one after the final evaluation (0: none)
  int64_t sharpness_iterations = 100;
  double sharpness_tolerance = 1e-3;
};

// Checkpoints and resume (run/checkpoint.h, run/preemption.h; docs/checkpoints.md).
struct CheckpointOptions {
  int64_t every_steps = 0;     // 0: no periodic checkpoints by step count
  double every_minutes = 0;    // 0: none by time; whichever of the two comes first
  std::string dir;             // "" = OUT_DIR/checkpoints
  int64_t keep = 2;            // newest checkpoints kept
  std::string resume = "never";  // never, auto or the path of a step-N folder
};

// What to do when a step's gradient is not finite (run/nonfinite.h).
struct FailureOptions {
  NonFinitePolicy on_nonfinite = NonFinitePolicy::Stop;
};

struct Config {
  BatchOptions batch;
  LrOptions lr;
  OptimizerOptions optimizer;
  RunOptions run;
  DataOptions data;
  ModelOptions model;
  DistributedOptions distributed;
  CheckpointOptions checkpoint;
  FailureOptions failure;
  StudyOptions study;
  std::string init_from;    // weights to start from ("" = random init)
  std::string export_path;  // where to write final weights ("" = nowhere)
  std::string config_file;  // the INI file the options came from, if any
};

// Each enum's words, once, in the order --help lists them: to_string, the
// option parser and the accepted list of --help and the docs tables
// (cli/option_table.cpp's choice()) all read this table.
template <typename Enum>
struct EnumWords;
#define DTRAIN_ENUM_WORDS(Enum, ...)                                     \
  template <>                                                           \
  struct EnumWords<Enum> {                                              \
    static constexpr std::pair<Enum, const char*> all[] = {__VA_ARGS__}; \
  }
DTRAIN_ENUM_WORDS(LrScaling, {LrScaling::Linear, "linear"}, {LrScaling::Sqrt, "sqrt"}, {LrScaling::None, "none"});
DTRAIN_ENUM_WORDS(LrScheduleKind, {LrScheduleKind::Constant, "constant"}, {LrScheduleKind::Cosine, "cosine"},
                  {LrScheduleKind::Linear, "linear"}, {LrScheduleKind::Step, "step"});
DTRAIN_ENUM_WORDS(OptimizerKind, {OptimizerKind::Sgd, "sgd"}, {OptimizerKind::AdamW, "adamw"},
                  {OptimizerKind::Lars, "lars"}, {OptimizerKind::Lamb, "lamb"});
DTRAIN_ENUM_WORDS(DatasetKind, {DatasetKind::FashionMnist, "fashion-mnist"}, {DatasetKind::Synthetic, "synthetic"},
                  {DatasetKind::Kjv, "kjv"}, {DatasetKind::Text, "text"});
DTRAIN_ENUM_WORDS(ModelKind, {ModelKind::Mlp, "mlp"}, {ModelKind::Cnn, "cnn"}, {ModelKind::SimpleCnn, "simple-cnn"},
                  {ModelKind::Gpt, "gpt"});
DTRAIN_ENUM_WORDS(BackendKind, {BackendKind::Auto, "auto"}, {BackendKind::Nccl, "nccl"}, {BackendKind::Mpi, "mpi"});
DTRAIN_ENUM_WORDS(DeviceKind, {DeviceKind::Auto, "auto"}, {DeviceKind::Cpu, "cpu"}, {DeviceKind::Cuda, "cuda"});
DTRAIN_ENUM_WORDS(ReduceDtype, {ReduceDtype::Fp32, "fp32"}, {ReduceDtype::Bf16, "bf16"}, {ReduceDtype::Fp16, "fp16"});
DTRAIN_ENUM_WORDS(Switch, {Switch::Auto, "auto"}, {Switch::On, "true"}, {Switch::Off, "false"});
DTRAIN_ENUM_WORDS(ActivationCheckpointing, {ActivationCheckpointing::None, "none"},
                  {ActivationCheckpointing::Blocks, "blocks"}, {ActivationCheckpointing::Auto, "auto"});
DTRAIN_ENUM_WORDS(Precision, {Precision::Fp32, "fp32"}, {Precision::Tf32, "tf32"},
                  {Precision::Bf16Mixed, "bf16-mixed"}, {Precision::Auto, "auto"});
DTRAIN_ENUM_WORDS(BatchScheduleLr, {BatchScheduleLr::Scale, "scale"}, {BatchScheduleLr::Fixed, "fixed"});
DTRAIN_ENUM_WORDS(EvalSplits, {EvalSplits::All, "all"}, {EvalSplits::Target, "target"});
DTRAIN_ENUM_WORDS(NonFinitePolicy, {NonFinitePolicy::Stop, "stop"}, {NonFinitePolicy::Skip, "skip"},
                  {NonFinitePolicy::Ignore, "ignore"});
#undef DTRAIN_ENUM_WORDS

// An enum's word (for the enums with a word table above).
template <typename Enum, typename = decltype(EnumWords<Enum>::all)>
const char* to_string(Enum value) {
  for (const auto& [each, word] : EnumWords<Enum>::all) {
    if (each == value) return word;
  }
  return "?";
}

// --eps auto: AdamW's 1e-8, LAMB's 1e-6 (their papers' defaults).
double default_eps(OptimizerKind kind);

// The one-line refusal of --activation-checkpointing blocks for a model
// without transformer blocks (the parser's and make_model's alike).
std::string activation_checkpointing_needs_blocks(ModelKind kind);

}  // namespace dtrain
