// The collective watchdog (comm/watchdog.h): what fires it, the one line it
// prints, and that it ends the process in time. Firing ends the process, so
// each such case runs in a death test (a forked child), with a 0.3 s timeout.
// Timing is checked as the watchdog promises it, with margins for a loaded
// 2-core machine under the sanitizers: never before the timeout, and within
// it plus the poll interval plus a slack of seconds; counts of polls are
// taken after the watchdog has demonstrably run, never after a fixed sleep.
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
// Generous for scheduling delays; the watchdog polls every timeout/4.
constexpr double kSlack = 3.0;
// How long a child waits for the watchdog to end it before exiting 42 (the
// test then fails): past every bound, and spent only on failure.
constexpr double kLinger = 10.0;

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

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Fires on a collective tracked at `tracked`: exit 1 if it fired no earlier
// than the timeout and no later than the timeout + a poll interval + the
// slack; else a line saying when, and exit 2.
void exit_judging_when_it_fired(std::chrono::steady_clock::time_point tracked) {
  const double after = seconds_since(tracked);
  if (after >= kTimeout && after <= kTimeout * 1.25 + kSlack) _exit(1);
  std::fprintf(stderr, "fired after %.3f s, outside [%g, %g] s\n", after, kTimeout, kTimeout * 1.25 + kSlack);
  _exit(2);
}

void track_forever_pending() {
  std::chrono::steady_clock::time_point tracked;
  auto watchdog = make_watchdog("GPU 1", [&tracked] { exit_judging_when_it_fired(tracked); });
  tracked = std::chrono::steady_clock::now();
  watchdog->track(std::make_shared<FakeCollective>(CollectiveState{}));
  linger_then_exit(kLinger);
}

void track_failed() {
  auto watchdog = make_watchdog();
  const char* error = "NCCL async error: remote process exited or there was a network error";
  watchdog->track(std::make_shared<FakeCollective>(CollectiveState{CollectiveState::Failed, error}));
  linger_then_exit(kLinger);
}

void check_health_failing_at_third_poll() {
  auto watchdog = make_watchdog();
  watchdog->add_health_check([polls = 0]() mutable {
    return ++polls < 3 ? std::string() : std::string("NCCL async error: unhandled system error");
  });
  linger_then_exit(kLinger);
}

void stay_in_scope() {
  auto watchdog = make_watchdog("");  // a CPU rank: no device in the line
  CollectiveWatchdog::Scope watched(watchdog.get(), "stop-agreement all-reduce");
  linger_then_exit(kLinger);
}

// As main() starts it: no timeout yet (0 s watches nothing), a scope open
// for 1.5 s without firing, then the device the backend names and the job's
// timeout, which the scope has outlived: exit 1 if it fired after the timeout
// came, within a poll interval (1 s without a timeout) + the slack; else 2.
void watch_nothing_then_the_jobs_timeout() {
  std::atomic<int64_t> given_ns{0};
  auto watchdog = std::make_unique<CollectiveWatchdog>(0, 3, "", [&given_ns] {
    const int64_t given = given_ns.load();
    const double after = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count() -
                         static_cast<double>(given) / 1e9;
    if (given != 0 && after <= 1.0 + kSlack) _exit(1);
    std::fprintf(stderr, given == 0 ? "fired without a timeout\n" : "fired %.3f s after the timeout came\n", after);
    _exit(2);
  });
  CollectiveWatchdog::Scope watched(watchdog.get(), "options agreement");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  watchdog->set_device("GPU 1");
  given_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
                 .count();
  watchdog->set_timeout(kTimeout);
  linger_then_exit(kLinger);
}

void track_with_blocking_abort() {
  auto watchdog = make_watchdog("GPU 1", [] { std::this_thread::sleep_for(std::chrono::hours(1)); });
  watchdog->track(std::make_shared<FakeCollective>(CollectiveState{}));
  linger_then_exit(kLinger);
}

// Prints how often a completed collective was polled and who still holds it,
// once the watchdog has made three more passes (a health check counts them)
// after the one that first polled it: however slowly the machine runs, a
// watchdog that kept a completed collective would have polled it again.
void track_done() {
  auto watchdog = make_watchdog();
  std::atomic<int> passes{0};
  watchdog->add_health_check([&passes] {
    ++passes;
    return std::string();
  });
  auto done = std::make_shared<FakeCollective>(CollectiveState{CollectiveState::Done, {}});
  watchdog->track(done);
  const auto start = std::chrono::steady_clock::now();
  auto wait_until = [&](auto condition) {
    while (!condition()) {
      if (seconds_since(start) > 30) {
        std::fprintf(stderr, "the watchdog made %d passes in 30 s\n", passes.load());
        _exit(3);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  };
  wait_until([&] { return done->polls.load() > 0; });
  const int first = passes.load();
  wait_until([&] { return passes.load() >= first + 3; });
  std::fprintf(stderr, "polls %d, owners %ld\n", done->polls.load(), done.use_count());
  _exit(0);
}

class Watchdog : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "fast"); }
};

TEST_F(Watchdog, FiresOnACollectiveThatNeverCompletes) {
  // Exit 1 only from the abort, and only when it came in time
  // (exit_judging_when_it_fired); 42 if it never came.
  EXPECT_EXIT(track_forever_pending(), ::testing::ExitedWithCode(1),
              "^dtrain: error: rank 3 \\(GPU 1\\): the gradient all-reduce at step 12 has not completed after 0\\.3 s "
              "\\(--collective-timeout\\): another rank stopped responding or died; aborting the job\n$");
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

TEST_F(Watchdog, WatchesNothingUntilGivenATimeout) {
  // Exit 2 if it fired during the 1.5 s without a timeout, 42 if never.
  EXPECT_EXIT(watch_nothing_then_the_jobs_timeout(), ::testing::ExitedWithCode(1),
              "^dtrain: error: rank 3 \\(GPU 1\\): the options agreement during start-up has not completed after "
              "0\\.3 s \\(--collective-timeout\\)");
}

TEST_F(Watchdog, EndsTheProcessItselfWhenTheAbortBlocks) {
  // Exit 1 (not the lingering child's 42) is the watchdog's own _exit: in
  // time. It must first give the abort its grace (min(3 s, the timeout)).
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EXIT(track_with_blocking_abort(), ::testing::ExitedWithCode(1),
              "has not completed after 0\\.3 s.*\ndtrain: error: rank 3 \\(GPU 1\\): the abort did not end the "
              "process within 0\\.3 s; exiting\n$");
  EXPECT_GE(seconds_since(start), 2 * kTimeout) << "fired or exited before the timeout and the abort's grace";
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
