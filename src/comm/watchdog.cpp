// The watchdog thread: ends the job when a collective waits past
// --collective-timeout, naming the rank, the step and the collective.
#include "comm/watchdog.h"

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <unistd.h>

namespace dtrain {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double seconds_since(int64_t since_ns) { return static_cast<double>(now_ns() - since_ns) / 1e9; }

std::string at_step(int64_t step) { return step >= 0 ? "at step " + std::to_string(step) : "during start-up"; }

// How long the abort action gets before the watchdog ends the process itself.
constexpr double kAbortGraceSeconds = 3;

}  // namespace

CollectiveWatchdog::CollectiveWatchdog(double timeout_seconds, int rank, std::string device,
                                       std::function<void()> on_timeout)
    : timeout_seconds_(timeout_seconds), rank_(rank), on_timeout_(std::move(on_timeout)), device_(std::move(device)) {
  thread_ = std::thread([this] { watch(); });
}

void CollectiveWatchdog::set_device(std::string device) {
  std::lock_guard<std::mutex> lock(mutex_);
  device_ = std::move(device);
}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  stop_signal_.notify_all();
  thread_.join();
}

void CollectiveWatchdog::track(std::shared_ptr<WatchedCollective> collective) {
  // Without a timeout nothing is checked, so nothing would drop it again.
  if (timeout_seconds_.load(std::memory_order_relaxed) <= 0) return;
  const int64_t since = now_ns();
  std::lock_guard<std::mutex> lock(mutex_);
  in_flight_.push_back({std::move(collective), since, step_.load(std::memory_order_relaxed)});
}

void CollectiveWatchdog::add_health_check(std::function<std::string()> check) {
  std::lock_guard<std::mutex> lock(mutex_);
  health_checks_.push_back(std::move(check));
}

CollectiveWatchdog::Scope::Scope(CollectiveWatchdog* watchdog, const char* what) : watchdog_(watchdog) {
  if (!watchdog_) return;
  if (watchdog_->depth_.fetch_add(1, std::memory_order_acq_rel) == 0) {
    watchdog_->what_.store(what, std::memory_order_relaxed);
    watchdog_->since_ns_.store(now_ns(), std::memory_order_release);
  }
}

CollectiveWatchdog::Scope::~Scope() {
  if (!watchdog_) return;
  if (watchdog_->depth_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    watchdog_->since_ns_.store(0, std::memory_order_release);
  }
}

const char* CollectiveWatchdog::scope_name() const {
  return depth_.load(std::memory_order_acquire) > 0 ? what_.load(std::memory_order_relaxed) : nullptr;
}

void CollectiveWatchdog::watch() {
  // Checks a few times per timeout (at least once a second), so a hang is
  // reported within the timeout plus that interval.
  const auto interval = [this] {
    const double timeout = timeout_seconds_.load(std::memory_order_relaxed);
    return std::chrono::duration<double>(timeout > 0 ? std::min(1.0, timeout / 4) : 1.0);
  };
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_signal_.wait_for(lock, interval(), [this] { return stopping_; })) {
    if (timeout_seconds_.load(std::memory_order_relaxed) <= 0) continue;  // 0: watch nothing
    const std::string failure = check();
    if (failure.empty()) continue;
    const std::string who = "rank " + std::to_string(rank_) + (device_.empty() ? "" : " (" + device_ + ")");
    lock.unlock();  // the abort action, and other threads, may still call in
    fire(who, failure);
  }
}

std::string CollectiveWatchdog::check() {
  // Text only on failure: a pass allocates nothing.
  const auto the = [](const char* what, int64_t step) { return std::string("the ") + what + " " + at_step(step); };
  const double timeout = timeout_seconds_.load(std::memory_order_relaxed);
  const auto timed_out = [timeout] {
    char text[160];
    std::snprintf(text, sizeof text,
                  " has not completed after %g s (--collective-timeout): another rank stopped responding or died",
                  timeout);
    return std::string(text);
  };

  const int64_t scope_since = since_ns_.load(std::memory_order_acquire);
  if (scope_since != 0 && seconds_since(scope_since) >= timeout) {
    const char* what = what_.load(std::memory_order_relaxed);
    return the(what ? what : "collective", step_.load()) + timed_out();
  }
  for (const auto& health_check : health_checks_) {
    const std::string error = health_check();
    if (!error.empty()) return "the communicator failed " + at_step(step_.load()) + ": " + error;
  }
  for (auto& watched : in_flight_) {
    const CollectiveState state = watched.collective->poll();
    if (state.status == CollectiveState::Failed) {
      return the(watched.collective->name(), watched.step) + " failed: " + state.error;
    }
    if (state.status == CollectiveState::Done) {
      watched.collective.reset();
    } else if (seconds_since(watched.since_ns) >= timeout) {
      return the(watched.collective->name(), watched.step) + timed_out();
    }
  }
  const auto done = [](const InFlight& watched) { return !watched.collective; };
  in_flight_.erase(std::remove_if(in_flight_.begin(), in_flight_.end(), done), in_flight_.end());
  return {};
}

void CollectiveWatchdog::fire(const std::string& who, const std::string& failure) {
  std::fprintf(stderr, "dtrain: error: %s: %s; aborting the job\n", who.c_str(), failure.c_str());
  std::fflush(stderr);
  // The abort action can block (ncclCommAbort waiting on a hung GPU, exit
  // handlers synchronizing it), so it runs on its own thread and this one
  // ends the process when its time is up.
  std::thread(on_timeout_).detach();
  const double grace = std::min(kAbortGraceSeconds, timeout_seconds_.load(std::memory_order_relaxed));
  std::this_thread::sleep_for(std::chrono::duration<double>(grace));
  std::fprintf(stderr, "dtrain: error: %s: the abort did not end the process within %g s; exiting\n", who.c_str(),
               grace);
  std::fflush(stderr);
  _exit(1);
}

JobWatchdog::JobWatchdog(double timeout_seconds, Communicator& bootstrap)
    : bootstrap_(bootstrap), watchdog_(timeout_seconds, bootstrap.rank(), "", [this] {
        // If the backend's abort blocks (NCCL's, on a hung GPU), the
        // watchdog's bound ends the process without MPI_Abort: mpirun then
        // ends the job because a rank exited unfinalized.
        {
          // The Attachment's end waits for this, so the backend outlives it.
          std::lock_guard<std::mutex> lock(attached_mutex_);
          if (attached_) attached_->abort();
        }
        MpiSession::abort_world(1);
      }) {
  bootstrap_.set_watchdog(&watchdog_);
}

JobWatchdog::~JobWatchdog() { bootstrap_.set_watchdog(nullptr); }

JobWatchdog::Attachment::Attachment(JobWatchdog& job, Communicator& comm, std::string device)
    : job_(job), comm_(comm) {
  job_.watchdog_.set_device(std::move(device));
  comm_.set_watchdog(&job_.watchdog_);
  if (&comm_ != &job_.bootstrap_) {
    std::lock_guard<std::mutex> lock(job_.attached_mutex_);
    job_.attached_ = &comm_;
  }
}

JobWatchdog::Attachment::~Attachment() {
  if (&comm_ != &job_.bootstrap_) {
    std::lock_guard<std::mutex> lock(job_.attached_mutex_);
    job_.attached_ = nullptr;
    comm_.set_watchdog(nullptr);
  }
}

}  // namespace dtrain
