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
