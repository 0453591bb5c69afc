// The GradientReducer: bucket buffers the gradients view, the backward hooks
// that start each bucket's all-reduce, finish(), abandon() and the norms.
#include "ddp/reducer.h"

#include "comm/watchdog.h"

#include "common/error.h"
#include "ddp/buckets.h"
#include "memory/memory.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <cmath>
#include <unordered_set>

namespace dtrain {

struct GradientReducer::Bucket {
  at::Tensor buffer;  // float gradients; the parameters' .grad are views into it
  at::Tensor wire;    // what is all-reduced: `buffer` itself, or its 16-bit copy
  at::Tensor before;  // the buffer before this micro-step (micro-batch norms; undefined until needed)
  // ZeRO-1 only:
  at::Tensor values;        // the parameters' flat buffer (they are views of it), padded like `buffer`
  at::Tensor own_wire;      // this rank's chunk of `wire`: the in-place reduce-scatter's output
  int64_t chunk = 0;        // elements per rank
  std::vector<size_t> parameters;
  size_t pending = 0;  // gradients not yet final in this step
  bool started = false;
  std::unique_ptr<Work> work;
};

struct GradientReducer::Hooks {
  // shared_ptr<Node> in LibTorch 1.x, intrusive_ptr<Node> in later versions.
  using NodePtr = decltype(torch::autograd::impl::grad_accumulator(std::declval<const at::Tensor&>()));
  std::vector<NodePtr> accumulators;  // kept alive: they own the hooks
  std::vector<uintptr_t> keys;
};

// Runs after AccumulateGrad has added this backward's gradient to .grad.
class GradientReducer::ReadyHook final : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(GradientReducer* reducer, size_t parameter) : reducer_(reducer), parameter_(parameter) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    reducer_->on_gradient_ready(parameter_);
    return outputs;
  }

 private:
  GradientReducer* reducer_;
  size_t parameter_;
};

GradientReducer::GradientReducer(std::vector<at::Tensor> parameters, Communicator& comm, ReducerOptions options)
    : parameters_(std::move(parameters)),
      comm_(comm),
      options_(options),
      sharded_(options.shard_optimizer_state && comm.world_size() > 1) {
  if (parameters_.empty()) throw Error("the model has no parameters to train");
  std::unordered_set<const c10::TensorImpl*> distinct;
  std::vector<int64_t> bytes;
  for (const auto& p : parameters_) {
    // A tensor listed twice would get two bucket views, and the second would
    // replace the first: pass each tensor once (models/models.h trainable_parameters).
    if (!distinct.insert(p.unsafeGetTensorImpl()).second) {
      throw Error("a parameter is listed twice (a tied weight?); give the reducer each tensor once");
    }
    if (p.scalar_type() != at::kFloat) throw Error("the gradient reducer needs float32 parameters");
    if (p.device() != parameters_.front().device()) throw Error("all parameters must be on one device");
    bytes.push_back(p.numel() * static_cast<int64_t>(p.element_size()));
    total_bytes_ += bytes.back();
  }
  const auto type = options_.reduce_dtype;
  if (type != at::kFloat && type != at::kBFloat16 && type != at::kHalf) {
    throw Error("gradients can be all-reduced as float32, bfloat16 or float16 only");
  }
  assignment_ = assign_buckets(bytes, std::min(options_.first_bucket_bytes, options_.bucket_bytes),
                               options_.bucket_bytes);
  buckets_.resize(assignment_.size());
  bucket_of_.resize(parameters_.size());
  for (size_t b = 0; b < assignment_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    bucket.parameters = assignment_[b];
    int64_t numel = 0;
    for (size_t i : bucket.parameters) numel += parameters_[i].numel();
    const int64_t padded = sharded_ ? padded_numel(numel, comm_.world_size()) : numel;
    bucket.buffer = torch::zeros({padded}, parameters_.front().options().requires_grad(false));
    bucket.wire = type == at::kFloat ? bucket.buffer : torch::zeros({padded}, bucket.buffer.options().dtype(type));
    int64_t offset = 0;
    for (size_t i : bucket.parameters) {
      auto& p = parameters_[i];
      p.mutable_grad() = bucket.buffer.narrow(0, offset, p.numel()).view(p.sizes());
      offset += p.numel();
      bucket_of_[i] = b;
    }
    if (sharded_) shard(b, numel);
  }
  hooks_ = std::make_unique<Hooks>();
  // At world size 1 the all-reduced gradient is the local one: final, and
  // checkable, as soon as backward has accumulated it.
  if (options_.check_finite_in_backward && comm_.world_size() == 1 && type == at::kFloat &&
      parameters_.front().device().is_cpu()) {
    finite_check_ = std::make_unique<FiniteCheck>();
    checked_in_backward_.assign(parameters_.size(), 0);
  }
  // At world size 1 there is nothing to communicate: no collectives, and
  // hooks only for the check in backward.
  if ((options_.overlap && comm_.world_size() > 1) || finite_check_) {
    for (size_t i = 0; i < parameters_.size(); ++i) {
      auto accumulator = torch::autograd::impl::grad_accumulator(parameters_[i]);
      if (!accumulator) {
        // No destructor runs for a constructor that throws: unhook what we hooked.
        for (size_t j = 0; j < hooks_->accumulators.size(); ++j) hooks_->accumulators[j]->del_post_hook(hooks_->keys[j]);
        throw Error("parameter " + std::to_string(i) + " is not a leaf that requires grad");
      }
      hooks_->keys.push_back(accumulator->add_post_hook(std::make_unique<ReadyHook>(this, i)));
      hooks_->accumulators.push_back(std::move(accumulator));
    }
  }
}

void GradientReducer::shard(size_t bucket_index, int64_t numel) {
  Bucket& bucket = buckets_[bucket_index];
  const int world = comm_.world_size();
  bucket.chunk = bucket.buffer.numel() / world;
  bucket.own_wire = own_chunk(bucket, bucket.wire);
  bucket.values = torch::zeros_like(bucket.buffer);
  // The parameters move into the flat buffer: same values, same autograd
  // identity (set_data keeps the grad accumulator and its hooks).
  torch::NoGradGuard no_grad;
  std::vector<int64_t> numels;
  int64_t offset = 0;
  for (size_t i : bucket.parameters) {
    auto& p = parameters_[i];
    auto view = bucket.values.narrow(0, offset, p.numel()).view(p.sizes());
    view.copy_(p);
    p.set_data(view);
    numels.push_back(p.numel());
    offset += p.numel();
  }
  if (offset != numel) throw Error("bucket layout mismatch");
  for (const auto& piece : shard_pieces(numels, world, comm_.rank())) {
    OwnedPiece owned;
    owned.parameter = bucket.parameters[piece.tensor];
    owned.offset_in_tensor = piece.offset_in_tensor;
    owned.value = bucket.values.narrow(0, piece.offset_in_bucket, piece.numel);
    owned.grad = bucket.buffer.narrow(0, piece.offset_in_bucket, piece.numel);
    owned_.push_back(std::move(owned));
  }
}

at::Tensor GradientReducer::own_chunk(const Bucket& bucket, const at::Tensor& flat) const {
  return sharded_ ? flat.narrow(0, comm_.rank() * bucket.chunk, bucket.chunk) : flat;
}

GradientReducer::~GradientReducer() {
  if (finite_check_) finite_check_->all_finite();  // nothing of ours read after we are gone
  // The model may outlive us: take our hooks off its accumulators.
  for (size_t i = 0; i < hooks_->accumulators.size(); ++i) hooks_->accumulators[i]->del_post_hook(hooks_->keys[i]);
  // Buckets in flight: destroying their Work (with buckets_) waits for them.
}

void GradientReducer::zero_grad() {
  if (finite_check_) {
    finite_check_->all_finite();  // the helper reads no bucket while it is zeroed
    std::fill(checked_in_backward_.begin(), checked_in_backward_.end(), 0);
    checked_by_hooks_ = 0;
  }
  for (auto& bucket : buckets_) bucket.buffer.zero_();
  micro_steps_begun_ = 0;
  if (track_micro_norms_) {
    if (!micro_sq_norm_sum_.defined()) {
      micro_sq_norm_sum_ = torch::zeros({}, buckets_.front().buffer.options().dtype(torch::kDouble));
    }
    micro_sq_norm_sum_.zero_();
  }
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& grad = parameters_[i].grad();
    if (!grad.defined() || !grad.is_alias_of(buckets_[bucket_of_[i]].buffer)) {
      throw Error("a parameter's gradient was detached from its bucket; do not reset gradients to undefined");
    }
  }
}

void GradientReducer::begin_micro_step(bool is_last) {
  // The previous micro-step's gradient is final now: measure it.
  if (track_micro_norms_ && micro_steps_begun_ > 0) {
    for (auto& bucket : buckets_) measure_micro_step(bucket);
  }
  ++micro_steps_begun_;
  last_micro_step_ = is_last;
  if (is_last) arm_buckets();
}

void GradientReducer::arm_buckets() {
  for (auto& bucket : buckets_) {
    bucket.pending = bucket.parameters.size();
    bucket.started = false;
  }
  next_to_start_ = 0;
  first_in_flight_ = 0;
  started_in_backward_ = 0;
  last_micro_step_ = true;
}

void GradientReducer::check_in_backward(size_t parameter) {
  if (checked_in_backward_[parameter]) return;
  checked_in_backward_[parameter] = 1;
  const at::Tensor& grad = parameters_[parameter].grad();
  finite_check_->submit(grad.data_ptr<float>(), static_cast<size_t>(grad.numel()));
}

void GradientReducer::on_gradient_ready(size_t parameter) {
  if (!last_micro_step_) return;  // accumulating locally: no communication
  if (finite_check_) {  // world size 1: nothing to start
    // As at world size > 1 (below): a second accumulation into a gradient
    // already handed on is misuse, and here it raced with the helper's read.
    if (checked_in_backward_[parameter]) {
      throw Error("parameter " + std::to_string(parameter) +
                  " got a second gradient in its last micro-step; run one backward per micro-step");
    }
    ++checked_by_hooks_;
    check_in_backward(parameter);
    return;
  }
  Bucket& bucket = buckets_[bucket_of_[parameter]];
  if (bucket.started || bucket.pending == 0) {
    throw Error("parameter " + std::to_string(parameter) +
                " got a gradient after its bucket's all-reduce started; run one backward per micro-step");
  }
  if (--bucket.pending == 0) {
    const size_t before = next_to_start_;
    start_ready_buckets();
    started_in_backward_ += static_cast<int64_t>(next_to_start_ - before);
  }
  // MPI advances nonblocking collectives only inside MPI calls: poll the
  // buckets still in flight, each once, so they progress while backward
  // computes. Buckets complete in start order, so finished ones are a prefix.
  for (size_t b = first_in_flight_; b < next_to_start_; ++b) {
    if (buckets_[b].work->test() && b == first_in_flight_) ++first_in_flight_;
  }
}

void GradientReducer::start_ready_buckets() {
  // Strictly in index order, so every rank issues the same sequence.
  // Counted once started: a start that throws (out of memory while measuring)
  // leaves the bucket to abandon().
  while (next_to_start_ < buckets_.size() && buckets_[next_to_start_].pending == 0) {
    start(buckets_[next_to_start_]);
    ++next_to_start_;
  }
}

void GradientReducer::measure_micro_step(Bucket& bucket) {
  // Before the first micro-step the buffer is zero: no copy needed.
  const bool first = micro_steps_begun_ <= 1;
  const at::Tensor own = first ? bucket.buffer : bucket.buffer - bucket.before;
  // The norm in float (ten times faster than in double on CPUs), squared in double.
  micro_sq_norm_sum_ += at::linalg_vector_norm(own, 2).to(at::kDouble).square();
  if (last_micro_step_) return;  // nothing accumulates after the last
  if (!bucket.before.defined()) bucket.before = torch::empty_like(bucket.buffer);
  bucket.before.copy_(bucket.buffer);
}

at::Tensor GradientReducer::micro_batch_sq_norm_sum() const {
  if (!track_micro_norms_ || !micro_sq_norm_sum_.defined()) throw Error("micro-batch norms are not tracked");
  return micro_sq_norm_sum_.reshape({1}).clone();
}

void GradientReducer::start(Bucket& bucket) {
  if (track_micro_norms_ && !abandoning_) measure_micro_step(bucket);
  if (!bucket.wire.is_same(bucket.buffer)) bucket.wire.copy_(bucket.buffer);
  // World size 1: the sum over one rank is the bucket itself.
  if (sharded_) {
    CollectiveWatchdog::Scope watched(comm_.watchdog(), "gradient reduce-scatter");
    bucket.work = comm_.reduce_scatter_async(bucket.wire, bucket.own_wire);  // in place
  } else if (comm_.world_size() > 1) {
    // Names the collective for the watchdog, which on NCCL watches it in flight.
    CollectiveWatchdog::Scope watched(comm_.watchdog(), "gradient all-reduce");
    bucket.work = comm_.all_reduce_async(bucket.wire, ReduceOp::Sum);
  } else {
    bucket.work = std::make_unique<CompletedWork>();
  }
  bucket.started = true;
}

void GradientReducer::finish() {
  if (!last_micro_step_) throw Error("GradientReducer::finish() called before the last micro-step");
  while (next_to_start_ < buckets_.size()) {
    start(buckets_[next_to_start_]);
    ++next_to_start_;
  }
  CollectiveWatchdog::Scope watched(comm_.watchdog(), sharded_ ? "gradient reduce-scatter" : "gradient all-reduce");
  for (auto& bucket : buckets_) {
    bucket.work->wait();
    bucket.work.reset();
    if (sharded_) {
      if (!bucket.wire.is_same(bucket.buffer)) own_chunk(bucket, bucket.buffer).copy_(bucket.own_wire);  // widened
    } else if (!bucket.wire.is_same(bucket.buffer)) {
      bucket.buffer.copy_(bucket.wire);
    }
  }
  last_micro_step_ = false;
}

void GradientReducer::gather_parameters() {
  if (!sharded_) return;
  CollectiveWatchdog::Scope watched(comm_.watchdog(), "parameter all-gather");
  std::vector<std::unique_ptr<Work>> works;
  for (auto& bucket : buckets_) works.push_back(comm_.all_gather_async(bucket.values));
  for (auto& work : works) work->wait();
}

std::vector<at::Tensor> GradientReducer::gather_pieces(const std::vector<at::Tensor>& pieces) {
  if (!sharded_) throw Error("gather_pieces needs a sharded optimizer state");
  if (pieces.size() != owned_.size()) throw Error("gather_pieces needs one tensor per owned piece");
  std::vector<at::Tensor> flats;
  for (const auto& bucket : buckets_) flats.push_back(torch::zeros_like(bucket.values));
  for (size_t i = 0; i < owned_.size(); ++i) {
    const OwnedPiece& piece = owned_[i];
    const int64_t at = piece.value.storage_offset() - buckets_[bucket_of_[piece.parameter]].values.storage_offset();
    flats[bucket_of_[piece.parameter]].narrow(0, at, piece.value.numel()).copy_(pieces[i].reshape({-1}));
  }
  {
    CollectiveWatchdog::Scope watched(comm_.watchdog(), "optimizer state all-gather");
    std::vector<std::unique_ptr<Work>> works;
    for (auto& flat : flats) works.push_back(comm_.all_gather_async(flat));
    for (auto& work : works) work->wait();
  }
  std::vector<at::Tensor> whole(parameters_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    int64_t offset = 0;
    for (size_t i : buckets_[b].parameters) {
      whole[i] = flats[b].narrow(0, offset, parameters_[i].numel());
      offset += parameters_[i].numel();
    }
  }
  return whole;
}

int64_t GradientReducer::buffer_bytes() const {
  int64_t bytes = 0;
  for (const auto& bucket : buckets_) {
    bytes += tensor_bytes({bucket.buffer, bucket.before});
    if (!bucket.wire.is_same(bucket.buffer)) bytes += tensor_bytes({bucket.wire});
  }
  return bytes;
}

void GradientReducer::abandon() {
  abandoning_ = true;
  if (!last_micro_step_) arm_buckets();  // failed before its last micro-step: nothing started yet
  try {
    finish();
  } catch (...) {
    abandoning_ = false;
    throw;
  }
  abandoning_ = false;
  micro_steps_begun_ = 0;
}

double GradientReducer::grad_norm() const {
  // On the device, read once: each .item() would stall a GPU stream. Each
  // bucket's norm in float (ten times faster than in double on CPUs),
  // combined in double; only a float norm that overflowed (finite gradients
  // of norm past 3e38) is recomputed in double.
  std::vector<at::Tensor> norms;
  for (const auto& bucket : buckets_) norms.push_back(at::linalg_vector_norm(own_chunk(bucket, bucket.buffer), 2));
  at::Tensor norm = at::linalg_vector_norm(torch::stack(norms).to(at::kDouble), 2);
  if (sharded_) {
    // The chunks' squared norms summed across ranks: one read. A float norm
    // that overflowed on any rank makes the sum inf on every rank, so all
    // recompute in double and sum again together.
    auto across_ranks = [&](const at::Tensor& chunk_norm) {
      at::Tensor squared = chunk_norm.square().reshape({1});
      CollectiveWatchdog::Scope watched(comm_.watchdog(), "gradient norm all-reduce");
      comm_.all_reduce(squared);
      return std::sqrt(squared.item<double>());
    };
    const double value = across_ranks(norm);
    if (!std::isinf(value)) return value;
    norms.clear();
    for (const auto& bucket : buckets_) {
      norms.push_back(at::linalg_vector_norm(own_chunk(bucket, bucket.buffer), 2, c10::nullopt, false, at::kDouble));
    }
    return across_ranks(at::linalg_vector_norm(torch::stack(norms), 2));
  }
  const double value = norm.item<double>();
  if (!std::isinf(value)) return value;
  norms.clear();
  for (const auto& bucket : buckets_) {
    norms.push_back(at::linalg_vector_norm(bucket.buffer, 2, c10::nullopt, false, at::kDouble));
  }
  return at::linalg_vector_norm(torch::stack(norms), 2).item<double>();
}

bool GradientReducer::all_finite() {
  if (finite_check_) {
    // Parameters backward did not reach (unused in this step's graph) hold
    // what accumulated: checked now, like a second call's whole check.
    for (size_t i = 0; i < parameters_.size(); ++i) check_in_backward(i);
    const bool finite = finite_check_->all_finite();
    std::fill(checked_in_backward_.begin(), checked_in_backward_.end(), 0);
    return finite;
  }
  auto local = [&] {
    std::vector<at::Tensor> sums;
    for (const auto& bucket : buckets_) sums.push_back(own_chunk(bucket, bucket.buffer).sum());
    if (std::isfinite(torch::stack(sums).sum().item<double>())) return true;
    // Non-finite elements, or finite ones whose float sum overflowed.
    for (const auto& bucket : buckets_) {
      if (!at::isfinite(own_chunk(bucket, bucket.buffer)).all().item<bool>()) return false;
    }
    return true;
  };
  if (!sharded_) return local();
  at::Tensor finite = torch::full({1}, local() ? 1.0 : 0.0, buckets_.front().buffer.options().dtype(at::kDouble));
  CollectiveWatchdog::Scope watched(comm_.watchdog(), "finite-gradient all-reduce");
  comm_.all_reduce(finite, ReduceOp::Min);
  return finite.item<double>() > 0;
}

void GradientReducer::scale(double factor) {
  if (finite_check_) {  // the helper reads nothing being written; a later all_finite() checks all again
    finite_check_->all_finite();
    std::fill(checked_in_backward_.begin(), checked_in_backward_.end(), 0);
  }
  for (auto& bucket : buckets_) bucket.buffer.mul_(factor);
}

}  // namespace dtrain
