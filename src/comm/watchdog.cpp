#include "comm/watchdog.h"

#include <chrono>
#include <cstdio>
#include <unistd.h>

namespace dtrain {

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

CollectiveWatchdog::CollectiveWatchdog(double timeout_seconds, int rank, std::function<void()> on_timeout)
    : timeout_seconds_(timeout_seconds), rank_(rank), on_timeout_(std::move(on_timeout)) {
  thread_ = std::thread([this] { watch(); });
}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  stop_signal_.notify_all();
  thread_.join();
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

void CollectiveWatchdog::watch() {
  // Checks a few times per timeout (at least once a second), so a hang is
  // reported within the timeout plus that interval.
  const auto interval = std::chrono::duration<double>(std::min(1.0, timeout_seconds_ / 4));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_signal_.wait_for(lock, interval, [this] { return stopping_; })) {
    const int64_t since = since_ns_.load(std::memory_order_acquire);
    if (since == 0) continue;
    const double waited = static_cast<double>(now_ns() - since) / 1e9;
    if (waited < timeout_seconds_) continue;
    const int64_t step = step_.load(std::memory_order_relaxed);
    const char* what = what_.load(std::memory_order_relaxed);
    char where[48] = "during start-up";
    if (step >= 0) std::snprintf(where, sizeof where, "at step %lld", static_cast<long long>(step));
    std::fprintf(stderr,
                 "dtrain: error: rank %d: the %s %s has not completed after %.0f s (--collective-timeout): another "
                 "rank stopped responding or died; aborting the job\n",
                 rank_, what ? what : "collective", where, waited);
    std::fflush(stderr);
    // If the abort itself hangs, the alarm's default action ends the process.
    alarm(30);
    on_timeout_();
    _exit(1);
  }
}

}  // namespace dtrain
