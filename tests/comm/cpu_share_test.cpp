// A rank's CPU share and the threads and overlap it gets: pure arithmetic
// over affinity masks, cgroup quotas and rank counts.
#include "comm/cpu_share.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>

namespace dtrain {
namespace {

CpuMask cpus(std::initializer_list<int> ids) {
  CpuMask mask(16, 0);
  for (int id : ids) mask[static_cast<size_t>(id / 64)] |= uint64_t{1} << (id % 64);
  return mask;
}

TEST(CpuShare, FromMasksQuotasAndNeighbours) {
  struct Case {
    const char* what;
    std::vector<CpuMask> host;
    int local_rank;
    double quota;
    int in_mask, sharing, share;
  };
  const Case cases[] = {
      {"taskset -c 0", {cpus({0})}, 0, 0, 1, 1, 1},
      {"taskset -c 0,1", {cpus({0, 1})}, 0, 0, 2, 1, 2},
      {"mpirun -np 2 (bound to a core each)", {cpus({0}), cpus({1})}, 1, 0, 1, 1, 1},
      {"mpirun -np 2 --bind-to none on 2 CPUs", {cpus({0, 1}), cpus({0, 1})}, 0, 0, 2, 2, 1},
      {"--bind-to none, 16 CPUs, 4 ranks", std::vector<CpuMask>(4, cpus({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})), 2, 0, 16, 4, 4},
      {"--map-by slot:PE=4, 2 ranks", {cpus({0, 1, 2, 3}), cpus({4, 5, 6, 7})}, 0, 0, 4, 1, 4},
      {"srun --cpus-per-task=8 on CPUs past 64", {cpus({64, 65, 66, 67, 68, 69, 70, 71})}, 0, 0, 8, 1, 8},
      {"a quota of 2.5 CPUs caps 8", {cpus({0, 1, 2, 3, 4, 5, 6, 7})}, 0, 2.5, 8, 1, 2},
      {"a quota above the mask changes nothing", {cpus({0, 1})}, 0, 8, 2, 1, 2},
      {"a quota of half a CPU still leaves 1", {cpus({0, 1})}, 0, 0.5, 2, 1, 1},
      {"a quota of 4 CPUs shared by 4 bound ranks of 16 CPUs each",
       {cpus({0, 1, 2, 3}), cpus({4, 5, 6, 7}), cpus({8, 9, 10, 11}), cpus({12, 13, 14, 15})}, 1, 4, 4, 1, 1},
      {"3 ranks on 2 shared CPUs: at least 1", std::vector<CpuMask>(3, cpus({0, 1})), 0, 0, 2, 3, 1},
      {"partly overlapping neighbours", {cpus({0, 1, 2, 3}), cpus({2, 3, 4, 5}), cpus({6, 7})}, 0, 0, 4, 2, 2},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const CpuShare share = compute_cpu_share(c.host, c.local_rank, c.quota);
    EXPECT_EQ(share.cpus_in_mask, c.in_mask);
    EXPECT_EQ(share.ranks_sharing, c.sharing);
    EXPECT_EQ(share.share, c.share);
    EXPECT_EQ(share.ranks_on_host, static_cast<int>(c.host.size()));
  }
}

TEST(CpuShare, ThreadsAndOverlapFromTheShare) {
  auto share_of = [](int cpus, int ranks_sharing = 1) {
    CpuShare share;
    share.cpus_in_mask = cpus * ranks_sharing;
    share.ranks_sharing = ranks_sharing;
    share.share = cpus;
    return share;
  };
  struct Case {
    const char* what;
    int requested;
    const char* omp;
    CpuShare share;
    Switch overlap;
    BackendKind backend;
    int world;
    int threads;
    bool overlapped, comm_thread;
  };
  const Case cases[] = {
      {"taskset -c 0", 0, nullptr, share_of(1), Switch::Auto, BackendKind::Mpi, 1, 1, false, false},
      {"taskset -c 0,1 at world 1: no overlap", 0, nullptr, share_of(2), Switch::Auto, BackendKind::Mpi, 1, 2, false, false},
      {"--overlap true at world 1: nothing to overlap", 0, nullptr, share_of(2), Switch::On, BackendKind::Mpi, 1, 2, false, false},
      {"taskset -c 0,1 with --overlap true at world 2", 0, nullptr, share_of(2), Switch::On, BackendKind::Mpi, 2, 1, true, true},
      {"OMP_NUM_THREADS=1 wins over the share", 0, "1", share_of(2), Switch::Auto, BackendKind::Mpi, 1, 1, false, false},
      {"OMP_NUM_THREADS as a list: the first", 0, "3,2", share_of(8), Switch::Auto, BackendKind::Mpi, 1, 3, false, false},
      {"OMP_NUM_THREADS that is not a number is ignored", 0, "many", share_of(2), Switch::Auto, BackendKind::Mpi, 1, 2, false, false},
      {"an explicit number wins over everything", 5, "1", share_of(2), Switch::Auto, BackendKind::Mpi, 1, 5, false, false},
      {"mpirun -np 2, one core each", 0, nullptr, share_of(1), Switch::Auto, BackendKind::Mpi, 2, 1, false, false},
      {"4 CPUs each with MPI: 3 + 1 for communication", 0, nullptr, share_of(4), Switch::Auto, BackendKind::Mpi, 2, 3, true, true},
      {"--overlap false keeps every CPU for compute", 0, nullptr, share_of(4), Switch::Off, BackendKind::Mpi, 2, 4, false, false},
      {"NCCL overlaps on one CPU", 0, nullptr, share_of(1), Switch::Auto, BackendKind::Nccl, 2, 1, true, false},
      {"NCCL needs no communication CPU", 0, nullptr, share_of(4), Switch::Auto, BackendKind::Nccl, 8, 4, true, false},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const ThreadPlan plan = plan_threads(c.requested, c.omp, c.share, c.overlap, c.backend, c.world);
    EXPECT_EQ(plan.threads, c.threads);
    EXPECT_EQ(plan.overlap, c.overlapped);
    EXPECT_EQ(plan.comm_thread, c.comm_thread);
    EXPECT_FALSE(plan.reason.empty());
  }
}

TEST(CpuShare, DescribesWhereTheNumbersCameFrom) {
  const CpuShare share = compute_cpu_share({cpus({0, 1, 2, 3}), cpus({0, 1, 2, 3})}, 0, 0);
  EXPECT_EQ(share.describe(), "4 CPUs in this rank's affinity mask, shared by 2 ranks; 2 ranks on this host");
  const CpuShare capped = compute_cpu_share({cpus({0, 1, 2, 3})}, 0, 2);
  EXPECT_EQ(capped.describe(), "4 CPUs in this rank's affinity mask, capped at 2 by the cgroup CPU quota; 1 rank on this host");
  EXPECT_EQ(plan_threads(0, "2", share, Switch::Auto, BackendKind::Mpi, 1).reason, "OMP_NUM_THREADS=2");
  EXPECT_EQ(plan_threads(3, nullptr, share, Switch::Auto, BackendKind::Mpi, 1).reason, "--threads 3");
}

TEST(CpuShare, CgroupQuotasV1AndV2) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("dtrain_cgroup_" + std::to_string(::getpid()));
  auto write = [](const fs::path& file, const std::string& text) {
    fs::create_directories(file.parent_path());
    std::ofstream(file) << text;
  };
  // v2: no limit at the leaf, 1.5 CPUs on the parent, 4 at the root.
  write(root / "v2/cpu.max", "400000 100000\n");
  write(root / "v2/job/cpu.max", "150000 100000\n");
  write(root / "v2/job/step/cpu.max", "max 100000\n");
  EXPECT_DOUBLE_EQ(cgroup_cpu_quota("0::/job/step\n", root / "v2"), 1.5);
  EXPECT_DOUBLE_EQ(cgroup_cpu_quota("0::/\n", root / "v2"), 4.0);
  // v1: the cpu controller's quota; -1 means none.
  write(root / "v1/cpu,cpuacct/docker/cpu.cfs_quota_us", "200000\n");
  write(root / "v1/cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
  write(root / "v1/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  write(root / "v1/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  EXPECT_DOUBLE_EQ(cgroup_cpu_quota("4:cpuset:/docker\n3:cpu,cpuacct:/docker\n", root / "v1"), 2.0);
  EXPECT_DOUBLE_EQ(cgroup_cpu_quota("3:cpu,cpuacct:/\n", root / "v1"), 0.0);
  EXPECT_DOUBLE_EQ(cgroup_cpu_quota("", root / "v1"), 0.0);
  fs::remove_all(root);
}

TEST(CpuShare, ThisProcessHasAtLeastOneCpu) {
  const CpuMask mask = this_process_mask();
  const CpuShare share = compute_cpu_share({mask}, 0, cgroup_cpu_quota());
  EXPECT_GE(share.cpus_in_mask, 1);
  EXPECT_GE(share.share, 1);
  EXPECT_GE(cgroup_cpu_quota(), 0.0);
}

}  // namespace
}  // namespace dtrain
