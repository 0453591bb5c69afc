// Gradient synchronization in buckets, overlapped with backward.
//
// Every parameter's gradient is a view into the contiguous buffer of its
// bucket (ddp/buckets.h), so micro-batches accumulate in place and nothing
// is copied for communication. On the last micro-step of an optimizer step, a
// hook on each parameter's gradient accumulator counts the bucket down; when
// all its gradients are final, the bucket's all-reduce starts (nonblocking)
// while backward goes on. Buckets start strictly in index order on every rank,
// so ranks whose graphs skip different parameters still issue collectives in
// the same order. finish() starts whatever has not started (buckets holding
// parameters unused in this step: their gradients are whatever accumulated,
// zeros if nothing did) and waits for all.
//
// Protocol, on every rank, per optimizer step:
//   zero_grad();
//   for each micro-step: begin_micro_step(is_last); loss.backward();
//   finish();            // then the optimizer step
// Gradients must never be reset to undefined (e.g. Optimizer::zero_grad with
// set_to_none): the views would be lost; zero_grad() checks this.
//
// With a sharded optimizer state (ZeRO-1, ReducerOptions::shard_optimizer_state,
// world > 1), each bucket is padded to a multiple of the world size and cut
// into one chunk per rank (ddp/buckets.h shard_pieces). The parameters too
// become views of one flat buffer per bucket, laid out like the gradients.
// The last micro-step's buckets are reduce-scattered in place instead of
// all-reduced: after finish() only this rank's chunk of each gradient bucket
// holds the global sum (the rest is undefined, and not to be read); the optimizer updates owned_pieces() only, and gather_parameters()
// all-gathers the updated chunks. The same bytes move as with an all-reduce.
// grad_norm() and all_finite() then read the chunks and combine them across
// ranks: collectives, which every rank calls at the same point.
#pragma once
#include "comm/communicator.h"
#include "ddp/finite_check.h"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace dtrain {

struct ReducerOptions {
  int64_t first_bucket_bytes = int64_t{1} << 20;
  int64_t bucket_bytes = int64_t{25} << 20;
  bool overlap = true;  // false: every bucket starts in finish(), after backward
  // Wire type of the all-reduce: float (exact), or bfloat16/float16, which
  // halve the bytes; the result is widened back into the float buffers.
  c10::ScalarType reduce_dtype = c10::ScalarType::Float;
  // ZeRO-1 (above). At world size 1 it changes nothing.
  bool shard_optimizer_state = false;
  // At world size 1, on the CPU, with float gradients on the wire: each
  // gradient is checked for NaN and Inf on a helper thread as soon as backward
  // makes it final (ddp/finite_check.h), so that all_finite() has little left
  // to do. Elsewhere all_finite() reads the buckets after finish().
  bool check_finite_in_backward = false;
};

// ZeRO-1: one tensor's part of this rank's chunk of a bucket. `value` and
// `grad` are views of the parameter's and the gradient's flat buffers.
struct OwnedPiece {
  size_t parameter = 0;          // index into the reducer's parameters
  int64_t offset_in_tensor = 0;  // in the flattened parameter
  at::Tensor value;              // 1-D, numel elements
  at::Tensor grad;
};

class GradientReducer {
 public:
  GradientReducer(std::vector<at::Tensor> parameters, Communicator& comm, ReducerOptions options);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  void zero_grad();
  // Hooks act only when `is_last`: earlier micro-steps communicate nothing.
  void begin_micro_step(bool is_last);
  // Starts the buckets not yet started, waits for all; after it every rank
  // holds the SUM of all ranks' gradients.
  void finish();
  // After this rank's micro-steps failed (out of memory, memory/out_of_memory.h):
  // starts every bucket its backward did not, in index order, with whatever
  // it holds, and waits for all, so that peers waiting on them are released;
  // measures nothing. The gradients are garbage after it: zero_grad() and
  // redo the step.
  void abandon();

  // Whether the optimizer state is sharded (ZeRO-1 asked for, world > 1).
  bool sharded() const { return sharded_; }
  // ZeRO-1: this rank's pieces, in bucket order (empty when not sharded).
  const std::vector<OwnedPiece>& owned_pieces() const { return owned_; }
  // ZeRO-1, after the optimizer updated owned_pieces(): every bucket's chunks
  // all-gathered, so every rank holds all the parameters again (collective).
  void gather_parameters();
  // ZeRO-1: a quantity shaped like owned_pieces() (one tensor per piece, of
  // its numel, on the parameters' device, float) all-gathered into one flat
  // tensor per parameter (collective). For the optimizer state of checkpoints.
  std::vector<at::Tensor> gather_pieces(const std::vector<at::Tensor>& pieces);

  // L2 norm of all gradients (after finish(): the global gradient's norm).
  // Sharded: the norm of the chunks, combined across ranks (collective).
  double grad_norm() const;
  // Whether every gradient element is finite: one float sum per bucket (a
  // NaN or Inf anywhere makes it non-finite), read once; only a sum that
  // overflows is looked at closely. Several times cheaper than grad_norm().
  // With the check in backward (ReducerOptions), the verdict on what it
  // checked there, plus whatever it had not; a second call checks all again.
  bool all_finite();
  void scale(double factor);

  // For the gradient noise scale (run/noise_scale.h): when on, each
  // micro-step's own gradient (this rank's, before communication) is
  // measured, as the difference of the buckets before and after its backward;
  // the last micro-step's just before its bucket's all-reduce starts. Costs a
  // pass over the gradients per micro-step, and a copy of them when
  // accumulating.
  void track_micro_batch_norms(bool on) { track_micro_norms_ = on; }
  // This rank's sum over the step's micro-batches of their raw gradients'
  // squared L2 norms (after finish()): a copy, a double of shape [1] on the
  // gradients' device, ready to all-reduce without a host round trip.
  at::Tensor micro_batch_sq_norm_sum() const;

  size_t num_buckets() const { return assignment_.size(); }
  // Parameter indices per bucket, in launch order.
  const std::vector<std::vector<size_t>>& bucket_assignment() const { return assignment_; }
  // Gradient bytes of all parameters (float): what one step all-reduces at
  // reduce_dtype float.
  int64_t bytes() const { return total_bytes_; }
  // Bytes the reducer holds: the buckets, their narrower wire copies
  // (bf16/fp16), and the noise scale's copies when tracked.
  int64_t buffer_bytes() const;
  // Buckets started from a backward hook (not by finish) in the last step.
  int64_t buckets_started_in_backward() const { return started_in_backward_; }
  // With the check in backward: gradients its hooks queued in this step
  // (all_finite() queues the rest).
  int64_t gradients_checked_in_backward() const { return checked_by_hooks_; }

 private:
  struct Bucket;
  class ReadyHook;
  struct Hooks;  // the accumulators we hooked (their pointer type differs across LibTorch versions)
  // Queues a final gradient for the check in backward, once per step.
  void check_in_backward(size_t parameter);
  void on_gradient_ready(size_t parameter);
  void start_ready_buckets();
  // Every bucket waits for all its gradients again; none started.
  void arm_buckets();
  void start(Bucket& bucket);
  // Adds |bucket - its value before this micro-step|^2 to the micro-batch sum.
  void measure_micro_step(Bucket& bucket);
  // ZeRO-1: what the constructor adds (flat parameter buffers, pieces).
  void shard(size_t bucket_index, int64_t numel);
  // This rank's chunk of a bucket-shaped tensor (the whole of it unsharded).
  at::Tensor own_chunk(const Bucket& bucket, const at::Tensor& flat) const;

  std::vector<at::Tensor> parameters_;
  Communicator& comm_;
  ReducerOptions options_;
  std::vector<std::vector<size_t>> assignment_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;  // parameter -> bucket
  std::unique_ptr<Hooks> hooks_;
  bool last_micro_step_ = false;
  size_t next_to_start_ = 0;
  size_t first_in_flight_ = 0;  // buckets before it have completed their all-reduce
  int64_t total_bytes_ = 0;
  int64_t started_in_backward_ = 0;
  bool track_micro_norms_ = false;
  bool sharded_ = false;
  std::vector<OwnedPiece> owned_;
  bool abandoning_ = false;  // in abandon(): no measuring, nothing that allocates
  int64_t micro_steps_begun_ = 0;  // in this optimizer step
  at::Tensor micro_sq_norm_sum_;   // double scalar on the device
  std::unique_ptr<FiniteCheck> finite_check_;  // the check in backward, when on
  std::vector<char> checked_in_backward_;      // per parameter, in this step
  int64_t checked_by_hooks_ = 0;
};

}  // namespace dtrain
