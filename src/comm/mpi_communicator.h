// The MPI backend of Communicator, for CPU tensors, and the MPI session that
// owns MPI_Init/MPI_Finalize. Every MPI call goes through MPI_CHECK, which
// throws CommError naming the call, file, line and MPI's message; the world
// communicator is set to MPI_ERRORS_RETURN so those checks see the errors.
//
// Async collectives (all-reduce, reduce-scatter, all-gather) run on one background thread, in the order they were
// started, as blocking MPI_Allreduce calls (Horovod's design): the tuned
// blocking algorithms are about twice as fast as MPI_Iallreduce here, and the
// thread makes progress while the caller computes, which nonblocking MPI does
// only inside MPI calls. MPI is initialized with MPI_THREAD_SERIALIZED, and
// every blocking call on the caller's thread first waits until the worker is
// idle, so two threads never call MPI at once. Without that thread level,
// async calls fall back to MPI_Iallreduce.
#pragma once
#include "comm/communicator.h"

#include <mpi.h>

#include <string>

namespace dtrain {

// Throws CommError if `code` is not MPI_SUCCESS.
void check_mpi(int code, const char* expression, const char* file, int line);

#define MPI_CHECK(call) ::dtrain::check_mpi((call), #call, __FILE__, __LINE__)

// RAII for MPI_Init/MPI_Finalize. Construct once, first thing in main().
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // Kills every rank of the job: for errors after which ranks cannot agree.
  [[noreturn]] static void abort_world(int exit_code);
};

class MpiCommunicator final : public Communicator {
 public:
  // Wraps MPI_COMM_WORLD (not owned). Needs an MpiSession alive.
  MpiCommunicator();
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  const char* backend_name() const override { return "mpi"; }
  void barrier() override;
  std::vector<int64_t> all_gather(int64_t value) override;
  // Collective over the ranks of this host (they share memory): each gives
  // `words` (the same length everywhere); returns them in local-rank order.
  std::vector<std::vector<uint64_t>> all_gather_on_host(const std::vector<uint64_t>& words);

 protected:
  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override;
  void do_broadcast(at::Tensor& tensor, int root) override;
  std::unique_ptr<Work> do_all_reduce_async(at::Tensor& tensor, ReduceOp op) override;
  std::unique_ptr<Work> do_reduce_scatter_async(at::Tensor& input, at::Tensor& output) override;
  std::unique_ptr<Work> do_all_gather_async(at::Tensor& buffer) override;

 public:
  class Worker;  // the background collective thread, defined in the .cpp

 private:
  // Waits until no async collective is queued or running.
  void drain();

  // The datatype and op for `tensor`; bfloat16/float16 use our own sum ops.
  MPI_Datatype datatype_of(const at::Tensor& tensor) const;
  MPI_Op op_for(const at::Tensor& tensor, ReduceOp op) const;

  MPI_Comm comm_;
  MPI_Comm host_comm_ = MPI_COMM_NULL;  // the ranks of this host (MPI_COMM_TYPE_SHARED)
  MPI_Op bfloat16_sum_ = MPI_OP_NULL;
  MPI_Op float16_sum_ = MPI_OP_NULL;
  std::unique_ptr<Worker> worker_;  // null without MPI_THREAD_SERIALIZED
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
};

}  // namespace dtrain
