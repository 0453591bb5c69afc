// Where a rank trains and how ranks talk: the device (CPU or the GPU of the
// rank's local rank) and the collective backend, chosen once at start-up.
// "auto" takes the first usable candidate of an ordered list (NCCL on a GPU,
// then MPI on the CPU), so the choice lives here and nowhere else.
#pragma once
#include "cli/config.h"
#include "comm/communicator.h"

#include <memory>
#include <string>

namespace dtrain {

struct Placement {
  DeviceKind device = DeviceKind::Cpu;    // resolved: Cpu or Cuda
  BackendKind backend = BackendKind::Mpi; // resolved: Mpi or Nccl
  int device_index = -1;                  // the GPU, for Cuda
  bool overlap = false;                   // resolved --overlap (plan_threads in comm/cpu_share.h)
  std::string describe() const;           // "cpu, mpi, buckets after backward" / "cuda:1, nccl, overlapped buckets"
};

// Whether this build has the NCCL backend, and how many GPUs LibTorch sees.
bool nccl_compiled();
int usable_gpu_count();

// Device and backend. Throws UsageError naming the missing piece (no GPU, no
// NCCL in this build, a CPU backend asked to move GPU tensors). Overlap is
// left to plan_threads (comm/cpu_share.h), which decides it with the threads.
Placement choose_placement(const DistributedOptions& options, int local_rank);

// Collective: every rank must have resolved "auto" the same way (a host
// without a GPU would otherwise join different collectives). Throws
// UsageError on every rank if not.
void check_same_placement(Communicator& comm, const Placement& placement);

// The communicator training uses: NCCL over `bootstrap` for Nccl, else null
// (train on `bootstrap` itself, the MPI communicator). `timeout_seconds`
// (--collective-timeout; 0: forever) bounds NCCL's initialization.
std::unique_ptr<Communicator> make_backend(const Placement& placement, Communicator& bootstrap,
                                           double timeout_seconds);

}  // namespace dtrain
