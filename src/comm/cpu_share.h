// How many CPU threads a rank uses, from the CPUs it owns. A rank's share is
// the CPUs in its affinity mask (what mpirun's binding, srun
// --cpus-per-task or taskset gave it) divided among the ranks on its host
// whose masks overlap it (ranks started with --bind-to none share the node),
// and capped by its part of the cgroup's CPU quota, which all the ranks of
// the host are taken to share. --threads auto and --overlap auto are
// decided together from that share: MPI's communication thread needs a CPU of
// its own to overlap with backward.
#pragma once
#include "cli/config.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace dtrain {

class MpiCommunicator;

// A set of CPU ids as 64-bit words (bit i of word w is CPU 64 w + i).
using CpuMask = std::vector<uint64_t>;

struct CpuShare {
  int cpus_in_mask = 1;    // CPUs this rank may run on
  double quota_cpus = 0;   // the cgroup's CPU quota in CPUs (0: none set)
  int ranks_sharing = 1;   // ranks on this host whose masks overlap ours, us included
  int ranks_on_host = 1;
  int share = 1;           // min(mask / ranks_sharing, quota / ranks_on_host), at least 1
  std::string describe() const;  // "4 CPUs in this rank's affinity mask; 2 ranks on this host"
};

// Pure: `host_masks` holds the mask of every rank on this host, ours at
// `local_rank`.
CpuShare compute_cpu_share(const std::vector<CpuMask>& host_masks, int local_rank, double quota_cpus);

// This process's affinity mask (sched_getaffinity).
CpuMask this_process_mask();
// The CPU quota of this process's cgroup in CPUs (cgroup v2 cpu.max, or v1
// cpu.cfs_quota_us / cpu.cfs_period_us; the smallest along the path), or 0.
double cgroup_cpu_quota();
// The same from the text of /proc/self/cgroup and the cgroup mount (tests).
double cgroup_cpu_quota(const std::string& proc_self_cgroup, const std::filesystem::path& mount);
// Collective over the ranks of this host: gathers their masks and computes
// this rank's share.
CpuShare measure_cpu_share(MpiCommunicator& comm);

struct ThreadPlan {
  int threads = 1;       // intra-op threads (torch::set_num_threads)
  bool overlap = false;  // resolved --overlap
  bool comm_thread = false;  // overlap on the MPI communication thread, which gets a CPU
  std::string reason;    // where `threads` came from, for the start-up line
};

// Pure. `requested_threads` 0 means auto; `omp_num_threads` is the
// environment's OMP_NUM_THREADS or null. Auto threads: OMP_NUM_THREADS (its
// first number, if a list), else the share less one CPU when MPI overlaps,
// at least 1. Overlap is off at world size 1 (nothing to communicate); auto
// overlap is on with NCCL, and with MPI when the share is at least 2.
ThreadPlan plan_threads(int requested_threads, const char* omp_num_threads, const CpuShare& share, Switch overlap,
                        BackendKind backend, int world_size);

}  // namespace dtrain
