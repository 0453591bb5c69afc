// Checkpoint and preemption agreements across ranks (ctest runs these at 1, 2
// and 4 ranks).
#include "common/error.h"
#include "test_world.h"
#include "run/checkpoint.h"
#include "run/preemption.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <thread>

namespace dtrain {
namespace {

using testing::world;

NamedTensors parameters(float last_value) {
  return {{"a.weight", torch::ones({3, 4})}, {"b.bias", torch::full({5}, last_value)}};
}

TEST(Checkpoint, IdenticalReplicasPassTheCheck) {
  const NamedTensors same = parameters(1);
  EXPECT_EQ(compare_replicas(world(), same, replica_checksums(same), 10), "");
}

TEST(Checkpoint, ADriftedReplicaIsNamedOnEveryRank) {
  auto& comm = world();
  if (comm.world_size() == 1) GTEST_SKIP() << "needs two ranks";
  const int last = comm.world_size() - 1;
  // The last rank's b.bias differs in one bit of one element.
  NamedTensors mine = parameters(1);
  if (comm.rank() == last) mine[1].second[2] = std::nextafter(1.0f, 2.0f);
  const std::string message = compare_replicas(comm, mine, replica_checksums(mine), 40);
  EXPECT_NE(message.find("at step 40 the ranks' parameters differ: b.bias on rank " + std::to_string(last)),
            std::string::npos)
      << "every rank must name the drifted tensor; got: " << message;
}

TEST(Preemption, ASignalOnOneRankStopsEveryRankAtTheSameStep) {
  auto& comm = world();
  install_preemption_handlers();
  clear_preemption_flag();
  StopAgreement agreement(comm, 0);
  EXPECT_FALSE(agreement.decide().stop);
  // A real signal, delivered to the last rank only.
  if (comm.rank() == comm.world_size() - 1) std::raise(SIGUSR1);
  const StepDecision decision = agreement.decide();
  EXPECT_TRUE(decision.stop) << "rank " << comm.rank() << " did not learn of the signal";
  EXPECT_FALSE(decision.checkpoint);
  EXPECT_EQ(preemption_signal(), comm.rank() == comm.world_size() - 1 ? SIGUSR1 : 0);
  clear_preemption_flag();
}

TEST(Preemption, RankZerosClockDecidesTimedCheckpoints) {
  auto& comm = world();
  clear_preemption_flag();
  // A tiny interval (60 us), past on rank 0; the others follow its clock.
  StopAgreement agreement(comm, 1e-6);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const StepDecision decision = agreement.decide();
  EXPECT_TRUE(decision.checkpoint);
  EXPECT_FALSE(decision.stop);
  StopAgreement never(comm, 0);
  EXPECT_FALSE(never.decide().checkpoint);
}

}  // namespace
}  // namespace dtrain
