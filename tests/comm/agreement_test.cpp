#include "comm/agreement.h"

#include "cli/options.h"
#include "common/error.h"
#include "test_world.h"

#include <gtest/gtest.h>

namespace dtrain {
namespace {

using testing::world;

TEST(Startup, AFailureOnOneRankStopsEveryRankWithoutAHang) {
  auto& comm = world();
  const int last = comm.world_size() - 1;
  int exit_code = -1;
  try {
    run_agreed(comm, [&] {
      if (comm.rank() == last) throw Error("data file missing on this node");
    });
  } catch (const AgreedFailure& failure) {
    exit_code = failure.exit_code();
  }
  EXPECT_EQ(exit_code, 1) << "every rank must learn of rank " << last << "'s failure";

  exit_code = -1;
  try {
    run_agreed(comm, [&] { throw UsageError("bad flag"); });
  } catch (const AgreedFailure& failure) {
    exit_code = failure.exit_code();
  }
  EXPECT_EQ(exit_code, 2);
  EXPECT_NO_THROW(run_agreed(comm, [] {}));
}

TEST(Startup, RanksWithDifferentConfigurationsAreCaught) {
  auto& comm = world();
  Config config = parse_options({"--seed", "3"}).config;
  EXPECT_NO_THROW(run_agreed(comm, [&] { check_same_config(comm, config); }));
  if (comm.world_size() == 1) GTEST_SKIP() << "needs two ranks to disagree";
  if (comm.rank() == 1) config.lr.lr = 0.5;
  int exit_code = -1;
  try {
    run_agreed(comm, [&] { check_same_config(comm, config); });
  } catch (const AgreedFailure& failure) {
    exit_code = failure.exit_code();
  }
  EXPECT_EQ(exit_code, 2);
}

}  // namespace
}  // namespace dtrain
