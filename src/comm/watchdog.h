// The collective watchdog (--collective-timeout): when a rank stops
// responding (SIGSTOP, a hung node, a lost link), the others wait inside a
// collective forever. A thread on every rank watches the collective the rank
// is in; past the timeout it prints one line naming the step and the
// collective, then runs the abort action (ncclCommAbort on GPUs, then
// MPI_Abort), which ends the whole job.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

namespace dtrain {

class CollectiveWatchdog {
 public:
  // `on_timeout` runs on the watchdog thread and must end the process.
  CollectiveWatchdog(double timeout_seconds, int rank, std::function<void()> on_timeout);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // The optimizer step being trained (named in the timeout line).
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }

  // Marks the caller as inside a collective for its lifetime. Nested scopes
  // keep the outermost name. A null watchdog watches nothing.
  class Scope {
   public:
    Scope(CollectiveWatchdog* watchdog, const char* what);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CollectiveWatchdog* watchdog_;
  };

 private:
  void watch();

  const double timeout_seconds_;
  const int rank_;
  std::function<void()> on_timeout_;
  std::atomic<int> depth_{0};
  std::atomic<const char*> what_{nullptr};
  std::atomic<int64_t> since_ns_{0};  // steady clock; 0: not in a collective
  std::atomic<int64_t> step_{-1};
  std::mutex mutex_;
  std::condition_variable stop_signal_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace dtrain
