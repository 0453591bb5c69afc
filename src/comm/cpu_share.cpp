// A rank's CPU share: its affinity mask, the cgroup quota, the ranks on its
// host, and the threads and overlap that follow.
#include "comm/cpu_share.h"

#include "comm/mpi_communicator.h"

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace dtrain {

namespace {

int count_cpus(const CpuMask& mask) {
  int count = 0;
  for (uint64_t word : mask) count += __builtin_popcountll(word);
  return count;
}

bool overlaps(const CpuMask& a, const CpuMask& b) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (a[i] & b[i]) return true;
  }
  return false;
}

std::string plural(int count, const char* noun) {
  return std::to_string(count) + " " + noun + (count == 1 ? "" : "s");
}

std::string format_cpus(double cpus) {
  std::ostringstream out;
  out << cpus;
  return out.str();
}

// One cgroup's quota in CPUs, or 0 if it sets none.
double quota_in(const std::filesystem::path& dir) {
  std::ifstream v2(dir / "cpu.max");
  std::string quota;
  double period = 0;
  if (v2 >> quota >> period) return quota == "max" || period <= 0 ? 0 : std::atof(quota.c_str()) / period;
  std::ifstream v1_quota(dir / "cpu.cfs_quota_us"), v1_period(dir / "cpu.cfs_period_us");
  double q = 0;
  if (v1_quota >> q && v1_period >> period && q > 0 && period > 0) return q / period;
  return 0;
}

}  // namespace

std::string CpuShare::describe() const {
  std::string text = plural(cpus_in_mask, "CPU") + " in this rank's affinity mask";
  if (quota_cpus > 0 && quota_cpus < cpus_in_mask) text += ", capped at " + format_cpus(quota_cpus) + " by the cgroup CPU quota";
  if (ranks_sharing > 1) text += ", shared by " + plural(ranks_sharing, "rank");
  return text + "; " + plural(ranks_on_host, "rank") + " on this host";
}

CpuShare compute_cpu_share(const std::vector<CpuMask>& host_masks, int local_rank, double quota_cpus) {
  CpuShare share;
  const CpuMask& mine = host_masks.at(static_cast<size_t>(local_rank));
  share.cpus_in_mask = std::max(1, count_cpus(mine));
  share.quota_cpus = quota_cpus;
  share.ranks_on_host = static_cast<int>(host_masks.size());
  share.ranks_sharing = 0;
  for (const auto& other : host_masks) share.ranks_sharing += overlaps(mine, other) ? 1 : 0;
  share.ranks_sharing = std::max(1, share.ranks_sharing);
  // The mask is shared with the ranks that overlap it; a quota (a
  // container's --cpus, usually) with every rank on the host.
  int cpus = share.cpus_in_mask / share.ranks_sharing;
  if (quota_cpus > 0) cpus = std::min(cpus, static_cast<int>(std::floor(quota_cpus / share.ranks_on_host)));
  share.share = std::max(1, cpus);
  return share;
}

CpuMask this_process_mask() {
  // Grow the set until the kernel's mask fits (hosts with over 1024 CPUs).
  for (int cpus = 1024; cpus <= (1 << 16); cpus *= 2) {
    cpu_set_t* set = CPU_ALLOC(cpus);
    const size_t size = CPU_ALLOC_SIZE(cpus);
    CPU_ZERO_S(size, set);
    if (sched_getaffinity(0, size, set) == 0) {
      CpuMask mask(static_cast<size_t>(cpus) / 64, 0);
      for (int cpu = 0; cpu < cpus; ++cpu) {
        if (CPU_ISSET_S(cpu, size, set)) mask[cpu / 64] |= uint64_t{1} << (cpu % 64);
      }
      CPU_FREE(set);
      return mask;
    }
    CPU_FREE(set);
    if (errno != EINVAL) break;
  }
  CpuMask unknown(16, 0);
  unknown[0] = 1;  // unknown: count one CPU rather than guess the machine
  return unknown;
}

double cgroup_cpu_quota() {
  std::ifstream file("/proc/self/cgroup");
  std::stringstream text;
  text << file.rdbuf();
  return cgroup_cpu_quota(text.str(), "/sys/fs/cgroup");
}

double cgroup_cpu_quota(const std::string& proc_self_cgroup, const std::filesystem::path& mount) {
  // /proc/self/cgroup: "0::/path" (v2) or "N:cpu,cpuacct:/path" (v1).
  std::istringstream cgroups(proc_self_cgroup);
  std::string line;
  double smallest = 0;
  while (std::getline(cgroups, line)) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    std::filesystem::path root = mount;
    if (controllers.empty()) {
      // v2: the unified hierarchy.
    } else if (controllers.find("cpu") != std::string::npos && controllers.find("cpuset") == std::string::npos) {
      root /= controllers;
    } else {
      continue;
    }
    // The smallest quota from our cgroup up to the root.
    std::filesystem::path dir = root / std::filesystem::path(line.substr(second + 1)).relative_path();
    while (true) {
      const double quota = quota_in(dir);
      if (quota > 0) smallest = smallest > 0 ? std::min(smallest, quota) : quota;
      if (dir == root || !dir.has_parent_path() || dir.parent_path() == dir) break;
      dir = dir.parent_path();
    }
  }
  return smallest;
}

CpuShare measure_cpu_share(MpiCommunicator& comm) {
  const CpuMask mine = this_process_mask();
  const std::vector<CpuMask> host_masks = comm.all_gather_on_host(mine);
  return compute_cpu_share(host_masks, comm.local_rank(), cgroup_cpu_quota());
}

ThreadPlan plan_threads(int requested_threads, const char* omp_num_threads, const CpuShare& share, Switch overlap,
                        BackendKind backend, int world_size) {
  ThreadPlan plan;
  switch (overlap) {
    case Switch::On: plan.overlap = true; break;
    case Switch::Off: plan.overlap = false; break;
    case Switch::Auto:
      // NCCL runs on the GPU, so overlapping costs no CPU; MPI's collectives
      // run on a thread that steals from backward unless it has a CPU.
      plan.overlap = backend == BackendKind::Nccl || share.share >= 2;
      break;
  }
  // A world of one communicates nothing (the reducer skips it): nothing to overlap.
  plan.overlap = plan.overlap && world_size > 1;
  plan.comm_thread = plan.overlap && backend == BackendKind::Mpi;

  if (requested_threads > 0) {
    plan.threads = requested_threads;
    plan.reason = "--threads " + std::to_string(requested_threads);
    return plan;
  }
  if (omp_num_threads != nullptr && *omp_num_threads != '\0') {
    // OMP_NUM_THREADS may be a list (one count per nesting level): the first counts.
    char* end = nullptr;
    const long value = std::strtol(omp_num_threads, &end, 10);
    if (end != omp_num_threads && (*end == '\0' || *end == ',') && value >= 1 && value <= 1024) {
      plan.threads = static_cast<int>(value);
      plan.reason = std::string("OMP_NUM_THREADS=") + omp_num_threads;
      return plan;
    }
  }
  plan.threads = std::max(1, share.share - (plan.comm_thread ? 1 : 0));
  plan.reason = share.describe();
  return plan;
}

}  // namespace dtrain
