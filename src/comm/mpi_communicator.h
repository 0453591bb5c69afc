// The MPI backend of Communicator, for CPU tensors, and the MPI session that
// owns MPI_Init/MPI_Finalize. Every MPI call goes through MPI_CHECK, which
// throws CommError naming the call, file, line and MPI's message; the world
// communicator is set to MPI_ERRORS_RETURN so those checks see the errors.
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
  const char* backend_name() const override { return "mpi"; }
  void barrier() override;
  std::vector<int64_t> all_gather(int64_t value) override;

 protected:
  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override;
  void do_broadcast(at::Tensor& tensor, int root) override;
  std::unique_ptr<Work> do_all_reduce_async(at::Tensor& tensor, ReduceOp op) override;

 private:
  // The datatype and op for `tensor`; bfloat16/float16 use our own sum ops.
  MPI_Datatype datatype_of(const at::Tensor& tensor) const;
  MPI_Op op_for(const at::Tensor& tensor, ReduceOp op) const;

  MPI_Comm comm_;
  MPI_Op bfloat16_sum_ = MPI_OP_NULL;
  MPI_Op float16_sum_ = MPI_OP_NULL;
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
};

}  // namespace dtrain
