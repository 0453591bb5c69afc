// The NCCL backend, on real GPUs. Skips (on every rank together) when this
// build has no NCCL or some rank has no GPU of its own; run on a GPU host by
// tests/gpu/run_gpu_checks.sh.
#include "comm/placement.h"
#include "common/error.h"
#include "test_world.h"

#ifdef DTRAIN_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <thread>

namespace dtrain {
namespace {

using testing::world;

// True on every rank iff every rank has a GPU of its own (collective).
bool every_rank_has_a_gpu() {
  const int64_t mine = nccl_compiled() && world().local_rank() < usable_gpu_count() ? 1 : 0;
  for (int64_t has : world().all_gather(mine)) {
    if (!has) return false;
  }
  return true;
}

TEST(Nccl, CollectivesOnGpus) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << "needs NCCL in the build and one GPU per rank";
#ifdef DTRAIN_HAVE_NCCL
  auto& mpi = world();
  const int device = mpi.local_rank();
  NcclCommunicator nccl(mpi, device);
  const auto on_gpu = torch::TensorOptions().device(torch::kCUDA, device);
  const int w = nccl.world_size();

  auto sum = torch::full({1000}, static_cast<float>(nccl.rank() + 1), on_gpu);
  nccl.all_reduce(sum);
  EXPECT_TRUE(torch::equal(sum.cpu(), torch::full({1000}, static_cast<float>(w * (w + 1) / 2))));

  auto max = torch::full({3}, static_cast<double>(nccl.rank()), on_gpu.dtype(torch::kDouble));
  nccl.all_reduce(max, ReduceOp::Max);
  EXPECT_EQ(max[0].item<double>(), w - 1);

  // Async: compute queued after wait() sees the result, without a host sync.
  auto async = torch::ones({1 << 20}, on_gpu);
  auto work = nccl.all_reduce_async(async);
  work->wait();
  EXPECT_EQ(async.sum().item<float>(), static_cast<float>(w) * (1 << 20));

  auto half = torch::ones({64}, on_gpu.dtype(torch::kBFloat16));
  nccl.all_reduce(half);
  EXPECT_EQ(half[0].item<float>(), static_cast<float>(w));

  auto broadcast = torch::full({5}, static_cast<float>(nccl.rank() + 10), on_gpu);
  nccl.broadcast(broadcast, w - 1);
  EXPECT_EQ(broadcast[0].item<float>(), static_cast<float>(w - 1 + 10));

  auto on_cpu = torch::ones({4});
  EXPECT_THROW(nccl.all_reduce(on_cpu), Error);
  nccl.barrier();
#endif
}

TEST(Nccl, PlacementRefusesWhatCannotWork) {
  DistributedOptions options;
  options.backend = BackendKind::Nccl;
  options.device = DeviceKind::Cpu;
  EXPECT_THROW(choose_placement(options, 0), UsageError);
  options.backend = BackendKind::Mpi;
  options.device = DeviceKind::Cpu;
  const Placement cpu = choose_placement(options, 0);
  EXPECT_EQ(cpu.backend, BackendKind::Mpi);
  EXPECT_EQ(cpu.describe(), "cpu, mpi, buckets after backward");
  options.backend = BackendKind::Auto;
  options.device = DeviceKind::Auto;
  const Placement automatic = choose_placement(options, 0);
  if (usable_gpu_count() == 0) {
    EXPECT_EQ(automatic.device, DeviceKind::Cpu);
    EXPECT_EQ(automatic.backend, BackendKind::Mpi);
    options.device = DeviceKind::Cuda;
    EXPECT_THROW(choose_placement(options, 0), UsageError);
    options.device = DeviceKind::Auto;
    options.backend = BackendKind::Nccl;
    EXPECT_THROW(choose_placement(options, 0), UsageError);
  } else if (nccl_compiled()) {
    EXPECT_EQ(automatic.device, DeviceKind::Cuda);
    EXPECT_EQ(automatic.backend, BackendKind::Nccl);
  }
}

}  // namespace
}  // namespace dtrain
