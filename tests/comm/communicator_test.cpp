#include "comm/communicator.h"

#include "common/error.h"
#include "test_world.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace dtrain {
namespace {

using testing::world;

TEST(Communicator, AllReduceSumsMaxesAndMins) {
  auto& comm = world();
  const int w = comm.world_size();
  auto sum = torch::full({5}, static_cast<float>(comm.rank() + 1));
  comm.all_reduce(sum);
  EXPECT_TRUE(torch::equal(sum, torch::full({5}, static_cast<float>(w * (w + 1) / 2))));
  auto max = torch::tensor({static_cast<double>(comm.rank()), -static_cast<double>(comm.rank())}, torch::kDouble);
  comm.all_reduce(max, ReduceOp::Max);
  EXPECT_EQ(max[0].item<double>(), w - 1);
  EXPECT_EQ(max[1].item<double>(), 0);
  auto min = torch::tensor({static_cast<int64_t>(comm.rank()) + 10}, torch::kLong);
  comm.all_reduce(min, ReduceOp::Min);
  EXPECT_EQ(min.item<int64_t>(), 10);
}

TEST(Communicator, BroadcastCopiesTheRootsTensor) {
  auto& comm = world();
  for (int root : {0, comm.world_size() - 1}) {
    auto tensor = torch::full({2, 3}, static_cast<float>(comm.rank() * 7 + 1));
    comm.broadcast(tensor, root);
    EXPECT_TRUE(torch::equal(tensor, torch::full({2, 3}, static_cast<float>(root * 7 + 1)))) << "root " << root;
  }
}

TEST(Communicator, AllGatherReturnsOneValuePerRankInOrder) {
  auto& comm = world();
  const auto values = comm.all_gather(100 + comm.rank());
  ASSERT_EQ(static_cast<int>(values.size()), comm.world_size());
  for (int r = 0; r < comm.world_size(); ++r) EXPECT_EQ(values[r], 100 + r);
  comm.barrier();
}

TEST(Communicator, CountsCallsAndBytes) {
  auto& comm = world();
  comm.reset_stats();
  auto a = torch::zeros({10}, torch::kFloat);
  auto b = torch::zeros({3}, torch::kDouble);
  comm.all_reduce(a);
  comm.all_reduce(b);
  comm.broadcast(a, 0);
  EXPECT_EQ(comm.stats().all_reduce_calls, 2);
  EXPECT_EQ(comm.stats().all_reduce_bytes, 10 * 4 + 3 * 8);
  EXPECT_EQ(comm.stats().broadcast_calls, 1);
  EXPECT_EQ(comm.stats().broadcast_bytes, 40);
}

// Rank r contributes 2r + i at element i of a buffer of world chunks of
// `chunk` elements: integers whose sums over up to 4 ranks stay below 256,
// exact in bfloat16 too.
at::Tensor scatter_input(int64_t chunk, int rank, int world, torch::ScalarType type) {
  return (torch::arange(chunk * world, torch::kFloat) + 2.0 * rank).to(type);
}

TEST(Communicator, ReduceScatterGivesEachRankTheSumOfItsChunk) {
  auto& comm = world();
  const int w = comm.world_size(), r = comm.rank();
  for (const auto type : {torch::kFloat, torch::kBFloat16}) {
    for (const int64_t chunk : {int64_t{1}, int64_t{7}}) {
      auto input = scatter_input(chunk, r, w, type);
      auto output = torch::full({chunk}, -1.0f).to(type);
      comm.reduce_scatter_async(input, output)->wait();
      // Sum over ranks q of (2q + r * chunk + i).
      const auto expected = (torch::arange(chunk, torch::kFloat) + static_cast<double>(r * chunk)) * w +
                            2.0 * (w * (w - 1) / 2);
      EXPECT_TRUE(torch::equal(output.to(torch::kFloat), expected)) << "chunk " << chunk << " type " << type;
      // The input is left as it was.
      EXPECT_TRUE(torch::equal(input, scatter_input(chunk, r, w, type)));
    }
  }
  auto input = torch::zeros({5 * w + 1});
  auto output = torch::zeros({5});
  EXPECT_THROW(comm.reduce_scatter_async(input, output), Error);
}

TEST(Communicator, AllGatherFillsEveryRanksChunkInPlace) {
  auto& comm = world();
  const int w = comm.world_size(), r = comm.rank();
  for (const int64_t chunk : {int64_t{1}, int64_t{1000}}) {
    // Every rank writes its own chunk; the others hold garbage (-1) before.
    auto buffer = torch::full({chunk * w}, -1.0f);
    buffer.narrow(0, r * chunk, chunk).copy_(torch::arange(chunk, torch::kFloat) + 1000.0 * r);
    comm.all_gather_async(buffer)->wait();
    std::vector<at::Tensor> chunks;
    for (int q = 0; q < w; ++q) chunks.push_back(torch::arange(chunk, torch::kFloat) + 1000.0 * q);
    EXPECT_TRUE(torch::equal(buffer, torch::cat(chunks))) << "chunk " << chunk;
  }
  auto uneven = torch::zeros({w + 1});
  if (w > 1) {
    EXPECT_THROW(comm.all_gather_async(uneven), Error);
  }
}

TEST(Communicator, ReduceScatterThenAllGatherIsAnAllReduce) {
  // ZeRO-1's claim: the same sum, moving the same bytes.
  auto& comm = world();
  const int w = comm.world_size();
  torch::manual_seed(17 + comm.rank());
  const int64_t chunk = 333;
  auto values = torch::randn({chunk * w});
  auto reduced = values.clone();
  comm.all_reduce(reduced);
  comm.reset_stats();
  auto own = torch::empty({chunk});
  comm.reduce_scatter_async(values, own)->wait();
  values.narrow(0, comm.rank() * chunk, chunk).copy_(own);
  comm.all_gather_async(values)->wait();
  EXPECT_TRUE(torch::allclose(values, reduced, 1e-6, 1e-5));
  EXPECT_EQ(comm.stats().reduce_scatter_calls, 1);
  EXPECT_EQ(comm.stats().all_gather_calls, 1);
  EXPECT_EQ(comm.stats().reduce_scatter_bytes, chunk * w * 4);
  EXPECT_EQ(comm.stats().all_gather_bytes, chunk * w * 4);
}

TEST(Communicator, RejectsTensorsItCannotSend) {
  auto& comm = world();
  auto strided = torch::zeros({4, 4}).t();
  EXPECT_THROW(comm.all_reduce(strided), Error);
  auto boolean = torch::zeros({4}, torch::kBool);
  EXPECT_THROW(comm.all_reduce(boolean), Error);
}

TEST(Communicator, LocalRankIsARankOnThisHost) {
  auto& comm = world();
  EXPECT_GE(comm.local_rank(), 0);
  EXPECT_LT(comm.local_rank(), comm.world_size());
  // mpirun on one host: local ranks are the world ranks.
  EXPECT_EQ(comm.local_rank(), comm.rank());
}

}  // namespace
}  // namespace dtrain
