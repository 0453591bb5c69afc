// The one interface through which ranks talk to each other: rank and world
// size, all-reduce, broadcast, barrier, a small all-gather, and the
// reduce-scatter and all-gather of a sharded optimizer state. Backends (MPI,
// NCCL, and LocalCommunicator for one process) implement the protected do_*
// methods; the public methods count calls and bytes so tests and benchmarks
// can assert the traffic.
//
// Invariant: every rank calls collectives in the same order, with tensors of
// the same shape and dtype. Count and dtype are read from the tensor, never
// passed by the caller.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace dtrain {

class CollectiveWatchdog;

enum class ReduceOp { Sum, Max, Min };

struct CommStats {
  int64_t all_reduce_calls = 0;
  int64_t all_reduce_bytes = 0;
  int64_t broadcast_calls = 0;
  int64_t broadcast_bytes = 0;
  int64_t reduce_scatter_calls = 0;
  int64_t reduce_scatter_bytes = 0;  // of the input (all chunks)
  int64_t all_gather_calls = 0;
  int64_t all_gather_bytes = 0;  // of the whole gathered buffer
};

// A collective in flight. wait() blocks until it has completed (and throws
// if it failed); test() polls and, for MPI, also drives its progress.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;
};

// A Work that was complete when it was returned.
class CompletedWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Rank among the processes on this host (picks the GPU on GPU hosts).
  virtual int local_rank() const = 0;
  // Processes on this host.
  virtual int local_size() const = 0;
  virtual const char* backend_name() const = 0;

  // In place; `tensor` must be contiguous. float, double, int32/64 and uint8
  // tensors take any op; bfloat16 and float16 take Sum only.
  void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::Sum);
  // Starts an all-reduce and returns at once. `tensor` must stay alive and
  // untouched until the Work completes. Ranks start async collectives in the
  // same order, like blocking ones.
  std::unique_ptr<Work> all_reduce_async(at::Tensor& tensor, ReduceOp op = ReduceOp::Sum);
  void broadcast(at::Tensor& tensor, int root);
  // ZeRO-1's two halves of an all-reduce (ddp/reducer.h). Both start and
  // return at once, like all_reduce_async, and take float or 16-bit float
  // tensors.
  // Sum-reduce-scatter: `input` is world_size() equal chunks; this rank's
  // `output` (one chunk's numel, the same dtype) becomes the sum over all
  // ranks of chunk rank(). Both stay alive and untouched until it completes.
  std::unique_ptr<Work> reduce_scatter_async(at::Tensor& input, at::Tensor& output);
  // In-place all-gather: `buffer` is world_size() equal chunks, of which
  // this rank contributes chunk rank(); afterwards every rank holds all.
  std::unique_ptr<Work> all_gather_async(at::Tensor& buffer);
  virtual void barrier() = 0;
  // One int64 per rank, in rank order. For agreement checks, not data.
  virtual std::vector<int64_t> all_gather(int64_t value) = 0;

  // Abandons collectives in flight, from another thread (the watchdog's):
  // NCCL aborts its communicator; elsewhere nothing to do.
  virtual void abort() {}

  // Collectives through this communicator report to `watchdog` (or none).
  void set_watchdog(CollectiveWatchdog* watchdog) { watchdog_ = watchdog; }
  CollectiveWatchdog* watchdog() const { return watchdog_; }

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = CommStats{}; }

 protected:
  virtual void do_all_reduce(at::Tensor& tensor, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> do_all_reduce_async(at::Tensor& tensor, ReduceOp op) = 0;
  virtual void do_broadcast(at::Tensor& tensor, int root) = 0;
  virtual std::unique_ptr<Work> do_reduce_scatter_async(at::Tensor& input, at::Tensor& output) = 0;
  virtual std::unique_ptr<Work> do_all_gather_async(at::Tensor& buffer) = 0;

 private:
  CommStats stats_;
  CollectiveWatchdog* watchdog_ = nullptr;
};

// World of one process: every collective is the identity. Used for
// single-process runs without MPI and as the reference in equivalence tests.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  const char* backend_name() const override { return "local"; }
  void barrier() override {}
  std::vector<int64_t> all_gather(int64_t value) override { return {value}; }

 protected:
  void do_all_reduce(at::Tensor&, ReduceOp) override {}
  std::unique_ptr<Work> do_all_reduce_async(at::Tensor&, ReduceOp) override {
    return std::make_unique<CompletedWork>();
  }
  void do_broadcast(at::Tensor&, int) override {}
  std::unique_ptr<Work> do_reduce_scatter_async(at::Tensor& input, at::Tensor& output) override {
    output.copy_(input);
    return std::make_unique<CompletedWork>();
  }
  std::unique_ptr<Work> do_all_gather_async(at::Tensor&) override { return std::make_unique<CompletedWork>(); }
};

}  // namespace dtrain
