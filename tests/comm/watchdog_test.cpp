// The collective watchdog (comm/watchdog.h): what fires it, the one line it
// prints, and that it ends the process in time. Firing ends the process, so
// each such case runs in a death test (a forked child), with a 0.3 s timeout.
#include "comm/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <unistd.h>

namespace dtrain {
namespace {

constexpr double kTimeout = 0.3;

// Reports `state` at every poll, and counts the polls.
class FakeCollective final : public WatchedCollective {
 public:
  explicit FakeCollective(CollectiveState state) : state_(std::move(state)) {}
  const char* name() const override { return "gradient all-reduce"; }
  CollectiveState poll() override {
    ++polls;
    return state_;
  }
  std::atomic<int> polls{0};

 private:
  CollectiveState state_;
};

// Rank 3 at step 12; its abort exits with 1, as MPI_Abort would.
std::unique_ptr<CollectiveWatchdog> make_watchdog(std::string device = "GPU 1",
                                                  std::function<void()> on_timeout = [] { _exit(1); }) {
  auto watchdog = std::make_unique<CollectiveWatchdog>(kTimeout, 3, std::move(device), std::move(on_timeout));
  watchdog->set_step(12);
  return watchdog;
}

// The child's end if the watchdog did not fire in time: a distinct exit code.
[[noreturn]] void linger_then_exit(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  _exit(42);
}

void track_forever_pending() {
  auto watchdog = make_watchdog();
  watchdog->track(std::make_shared<FakeCollective>(CollectiveState{}));
  linger_then_exit(5);
}

void track_failed() {
  auto watchdog = make_watchdog();
  const char* error = "NCCL async error: remote process exited or there was a network error";
  watchdog->track(std::make_shared<FakeCollective>(CollectiveState{CollectiveState::Failed, error}));
  linger_then_exit(5);
}

void check_health_failing_at_third_poll() {
  auto watchdog = make_watchdog();
  watchdog->add_health_check([polls = 0]() mutable {
    return ++polls < 3 ? std::string() : std::string("NCCL async error: unhandled system error");
  });
  linger_then_exit(5);
}

void stay_in_scope() {
  auto watchdog = make_watchdog("");  // a CPU rank: no device in the line
  CollectiveWatchdog::Scope watched(watchdog.get(), "stop-agreement all-reduce");
  linger_then_exit(5);
}

void track_with_blocking_abort() {
  auto watchdog = make_watchdog("GPU 1", [] { std::this_thread::sleep_for(std::chrono::hours(1)); });
  watchdog->track(std::make_shared<FakeCollective>(CollectiveState{}));
  linger_then_exit(5);
}

// Prints how often a completed collective was polled and who still holds it.
void track_done() {
  auto watchdog = make_watchdog();
  auto done = std::make_shared<FakeCollective>(CollectiveState{CollectiveState::Done, {}});
  watchdog->track(done);
  std::this_thread::sleep_for(std::chrono::duration<double>(4 * kTimeout));
  std::fprintf(stderr, "polls %d, owners %ld\n", done->polls.load(), done.use_count());
  _exit(0);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class Watchdog : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "fast"); }
};

TEST_F(Watchdog, FiresOnACollectiveThatNeverCompletes) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EXIT(track_forever_pending(), ::testing::ExitedWithCode(1),
              "^dtrain: error: rank 3 \\(GPU 1\\): the gradient all-reduce at step 12 has not completed after 0\\.3 s "
              "\\(--collective-timeout\\): another rank stopped responding or died; aborting the job\n$");
  // Polled every timeout/4: fires well within the timeout + 1.5 s.
  EXPECT_LT(seconds_since(start), kTimeout + 1.5);
}

TEST_F(Watchdog, DropsACompletedCollectiveAndStaysQuiet) {
  EXPECT_EXIT(track_done(), ::testing::ExitedWithCode(0), "^polls 1, owners 1\n$");
}

TEST_F(Watchdog, FiresOnAFailedCollectiveWithItsMessage) {
  EXPECT_EXIT(track_failed(), ::testing::ExitedWithCode(1),
              "^dtrain: error: rank 3 \\(GPU 1\\): the gradient all-reduce at step 12 failed: NCCL async error: "
              "remote process exited or there was a network error; aborting the job\n$");
}

TEST_F(Watchdog, FiresOnAFailedHealthCheck) {
  EXPECT_EXIT(check_health_failing_at_third_poll(), ::testing::ExitedWithCode(1),
              "^dtrain: error: rank 3 \\(GPU 1\\): the communicator failed at step 12: NCCL async error: unhandled "
              "system error; aborting the job\n$");
}

TEST_F(Watchdog, FiresOnAScopeThatOutlastsTheTimeout) {
  EXPECT_EXIT(stay_in_scope(), ::testing::ExitedWithCode(1),
              "^dtrain: error: rank 3: the stop-agreement all-reduce at step 12 has not completed after 0\\.3 s");
}

TEST_F(Watchdog, EndsTheProcessItselfWhenTheAbortBlocks) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EXIT(track_with_blocking_abort(), ::testing::ExitedWithCode(1),
              "has not completed after 0\\.3 s.*\ndtrain: error: rank 3 \\(GPU 1\\): the abort did not end the "
              "process within 0\\.3 s; exiting\n$");
  EXPECT_LT(seconds_since(start), 2 * kTimeout + 1.5);
}

TEST(WatchdogScope, NamesTheOutermostOpenScope) {
  CollectiveWatchdog watchdog(60, 0, "", [] {});
  EXPECT_EQ(watchdog.scope_name(), nullptr);
  {
    CollectiveWatchdog::Scope outer(&watchdog, "gradient all-reduce");
    CollectiveWatchdog::Scope inner(&watchdog, "all-reduce");
    EXPECT_STREQ(watchdog.scope_name(), "gradient all-reduce");
  }
  EXPECT_EQ(watchdog.scope_name(), nullptr);
  CollectiveWatchdog::Scope unwatched(nullptr, "all-reduce");  // a null watchdog watches nothing
}

}  // namespace
}  // namespace dtrain
