// The NCCL backend, on real GPUs: every dtype it takes, with each op it
// supports; broadcast from every root; asynchronous all-reduces that complete,
// return before the GPU is done, and order the stream that is current when
// wait() is called (not the one current at the start). Works at any world
// size, one GPU per rank, a world of one included. Skips (on every rank
// together) when this build has no NCCL or some rank has no GPU of its own;
// run on a GPU host by tests/gpu/. The reducer's overlap path through NCCL is
// in tests/ddp/reducer_gpu_test.cpp.
#include "comm/placement.h"
#include "common/error.h"
#include "skip.h"
#include "test_world.h"

#ifdef DTRAIN_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif
#ifdef DTRAIN_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <thread>

namespace dtrain {
namespace {

using testing::every_rank_has_a_gpu;
using testing::world;

TEST(Nccl, CollectivesOnGpus) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
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

#ifdef DTRAIN_HAVE_NCCL
// Rank r contributes (i % 10) + r + 1 at element i: small integers, exact in
// every dtype (uint8 and half included) for the sums of up to 8 ranks.
at::Tensor contribution(int64_t numel, int rank, const torch::TensorOptions& options) {
  return (torch::arange(numel, torch::kLong) % 10 + (rank + 1)).to(options);
}

// What `op` over all ranks' contributions gives, in double on the CPU.
at::Tensor expected_reduction(int64_t numel, int world_size, ReduceOp op) {
  const auto base = (torch::arange(numel, torch::kLong) % 10).to(torch::kDouble);
  switch (op) {
    case ReduceOp::Sum: return base * world_size + world_size * (world_size + 1) / 2;
    case ReduceOp::Max: return base + world_size;
    case ReduceOp::Min: return base + 1;
  }
  return {};
}

const char* op_name(ReduceOp op) { return op == ReduceOp::Sum ? "sum" : op == ReduceOp::Max ? "max" : "min"; }
#endif

TEST(Nccl, AllReducesEveryDtypeWithEveryOpItTakes) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
  auto& mpi = world();
  const int device = mpi.local_rank();
  NcclCommunicator nccl(mpi, device);
  const int w = nccl.world_size();
  ASSERT_LE(w, 8) << "the contributions stay exact in uint8 and half up to 8 ranks";
  // An odd element count, so a count passed in bytes or rounded would show.
  constexpr int64_t kNumel = 1001;
  // communicator.h: 16-bit floats take Sum only; the rest take every op.
  for (auto dtype : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16, torch::kInt, torch::kLong,
                     torch::kByte}) {
    const bool sum_only = dtype == torch::kHalf || dtype == torch::kBFloat16;
    for (auto op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
      if (sum_only && op != ReduceOp::Sum) continue;
      auto tensor = contribution(kNumel, nccl.rank(), torch::TensorOptions().dtype(dtype).device(torch::kCUDA, device));
      nccl.all_reduce(tensor, op);
      EXPECT_EQ(tensor.scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(tensor.cpu().to(torch::kDouble), expected_reduction(kNumel, w, op)))
          << c10::toString(dtype) << " " << op_name(op) << " at world size " << w;
    }
  }
  // Asynchronous, for each dtype once.
  for (auto dtype : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16, torch::kInt, torch::kLong,
                     torch::kByte}) {
    auto tensor = contribution(kNumel, nccl.rank(), torch::TensorOptions().dtype(dtype).device(torch::kCUDA, device));
    nccl.all_reduce_async(tensor)->wait();
    EXPECT_TRUE(torch::equal(tensor.cpu().to(torch::kDouble), expected_reduction(kNumel, w, ReduceOp::Sum)))
        << c10::toString(dtype) << " async sum";
  }
  auto on_cpu = torch::ones({4});
  EXPECT_THROW(nccl.all_reduce(on_cpu), Error);
#endif
}

TEST(Nccl, BroadcastsFromEveryRoot) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
  auto& mpi = world();
  const int device = mpi.local_rank();
  NcclCommunicator nccl(mpi, device);
  for (int root = 0; root < nccl.world_size(); ++root) {
    for (auto dtype : {torch::kFloat, torch::kLong, torch::kBFloat16}) {
      auto tensor =
          contribution(777, nccl.rank(), torch::TensorOptions().dtype(dtype).device(torch::kCUDA, device));
      nccl.broadcast(tensor, root);
      const auto from_root = contribution(777, root, torch::TensorOptions().dtype(torch::kDouble));
      EXPECT_TRUE(torch::equal(tensor.cpu().to(torch::kDouble), from_root)) << c10::toString(dtype) << " root " << root;
    }
  }
  EXPECT_EQ(nccl.stats().broadcast_calls, 3 * nccl.world_size());
#endif
}

// ZeRO-1's collectives on NCCL, against MPI's on the same CPU data: the
// same reduce-scatter and all-gather results.
TEST(Nccl, ReduceScatterAndAllGatherMatchMpi) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
  auto& mpi = world();
  const int device = mpi.local_rank();
  NcclCommunicator nccl(mpi, device);
  const int w = nccl.world_size();
  const int64_t chunk = 4099;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto input = contribution(chunk * w, nccl.rank(), torch::TensorOptions().dtype(dtype));
    auto on_cpu = input.clone();
    auto cpu_out = torch::empty({chunk}, input.options());
    mpi.reduce_scatter_async(on_cpu, cpu_out)->wait();
    auto on_gpu = input.to(torch::Device(torch::kCUDA, device));
    auto gpu_out = torch::empty({chunk}, on_gpu.options());
    nccl.reduce_scatter_async(on_gpu, gpu_out)->wait();
    EXPECT_TRUE(torch::equal(gpu_out.cpu(), cpu_out)) << c10::toString(dtype);

    auto gathered_cpu = torch::zeros({chunk * w}, input.options());
    gathered_cpu.narrow(0, nccl.rank() * chunk, chunk).copy_(cpu_out);
    auto gathered_gpu = gathered_cpu.to(torch::Device(torch::kCUDA, device));
    mpi.all_gather_async(gathered_cpu)->wait();
    nccl.all_gather_async(gathered_gpu)->wait();
    EXPECT_TRUE(torch::equal(gathered_gpu.cpu(), gathered_cpu)) << c10::toString(dtype);
  }
  EXPECT_EQ(nccl.stats().reduce_scatter_calls, 2);
  EXPECT_EQ(nccl.stats().all_gather_calls, 2);
#endif
}

TEST(Nccl, AsyncWorkCompletesAndWaitOrdersTheStreamCurrentAtWait) {
  if (!every_rank_has_a_gpu()) GTEST_SKIP() << testing::kNoGpuSkip;
#ifdef DTRAIN_HAVE_NCCL
  auto& mpi = world();
  const int device = mpi.local_rank();
  NcclCommunicator nccl(mpi, device);
  const auto on_gpu = torch::TensorOptions().device(torch::kCUDA, device);
  const int w = nccl.world_size();
  const float rank_sum = static_cast<float>(w * (w + 1) / 2);

  // test() turns true by itself (no wait() needed), and wait() after it is fine.
  auto polled = torch::full({1 << 20}, static_cast<float>(nccl.rank() + 1), on_gpu);
  auto work = nccl.all_reduce_async(polled);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool done = false;
  while (!(done = work->test()) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(done) << "test() never reported the all-reduce complete";
  work->wait();
  EXPECT_TRUE(torch::equal(polled.cpu(), torch::full({1 << 20}, rank_sum)));

#ifdef DTRAIN_TORCH_CUDA
  // The data is written on the current (default) stream after ~50 ms of
  // spinning; the all-reduce starts on it; the result is read on another
  // stream, current only when wait() is called. Only if wait() orders that
  // stream after the all-reduce (which waits for the writes) does the read
  // see the sum: otherwise the read runs at once, while the spin is going on.
  constexpr int64_t kSpinCycles = 100'000'000;  // ~50 ms at 2 GHz
  constexpr int64_t kNumel = 1 << 16;
  const c10::cuda::CUDAGuard on_device(static_cast<c10::DeviceIndex>(device));  // where the spin runs
  const auto reader = at::cuda::getStreamFromPool(/*isHighPriority=*/false, device);
  auto data = torch::zeros({kNumel}, on_gpu);
  at::Tensor seen;
  {
    // Allocated before the spin: an allocation in the timed window could
    // synchronize the device and hide a missing order.
    c10::cuda::CUDAStreamGuard on_reader(reader);
    seen = torch::empty({kNumel}, on_gpu);
  }
  torch::cuda::synchronize(device);
  at::cuda::sleep(kSpinCycles);
  data.fill_(static_cast<float>(nccl.rank() + 1));
  auto ordered = nccl.all_reduce_async(data);
  EXPECT_FALSE(ordered->test()) << "all_reduce_async returned after the GPU finished: it must return at once, "
                                   "and the all-reduce cannot complete before the ~50 ms spin ahead of its data";
  {
    c10::cuda::CUDAStreamGuard on_reader(reader);
    ordered->wait();
    seen.copy_(data);
  }
  torch::cuda::synchronize(device);
  EXPECT_TRUE(torch::equal(seen.cpu(), torch::full({kNumel}, rank_sum)))
      << "a stream made current after the all-reduce started read its tensor before the all-reduce finished: "
         "wait() must order the stream current when it is called";
  EXPECT_TRUE(torch::equal(data.cpu(), torch::full({kNumel}, rank_sum)));
#endif
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
