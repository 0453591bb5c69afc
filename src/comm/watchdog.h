// The collective watchdog (--collective-timeout), modelled on the watchdog
// of PyTorch's ProcessGroupNCCL: when a rank stops responding (SIGSTOP, a
// hung node or GPU, a lost link), the others wait for it forever. A thread on
// every rank watches three things, a few times per timeout (at least once a
// second):
//   - the Scope the rank's thread is in (a blocking MPI collective);
//   - the collectives in flight, tracked when they start (NCCL returns at
//     once, and the rank may then block where no polling helps: in .item()
//     or a stream synchronization): each is polled until done;
//   - health checks (NCCL's asynchronous error: a peer died, the network
//     failed).
// A scope or collective past the timeout, a failed collective or a failed
// health check fires: one line on stderr naming the rank, the GPU, the step
// and the collective, then the abort action (ncclCommAbort, then MPI_Abort).
// The abort is bounded: if it has not ended the process within 3 s, _exit(1)
// does (and mpirun then ends the other ranks).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dtrain {

class Communicator;

// What one poll of a collective in flight found.
struct CollectiveState {
  enum Status { Pending, Done, Failed };
  Status status = Pending;
  std::string error;  // for Failed: what went wrong, one line
};

// A collective in flight, as the watchdog sees it. poll() runs on the
// watchdog thread, concurrently with the owner's use, so it must be
// thread-safe and must not block.
class WatchedCollective {
 public:
  virtual ~WatchedCollective() = default;
  // E.g. "gradient all-reduce"; must outlive the object (a literal).
  virtual const char* name() const = 0;
  virtual CollectiveState poll() = 0;
};

class CollectiveWatchdog {
 public:
  // `device` describes the rank's device in the fired line ("GPU 0"; empty
  // on CPUs). `on_timeout` runs on its own thread and should end the process;
  // 3 s later (or after the timeout, if shorter) _exit(1) ends it regardless.
  // A timeout of 0 s watches nothing (until set_timeout gives one).
  CollectiveWatchdog(double timeout_seconds, int rank, std::string device, std::function<void()> on_timeout);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // The optimizer step being trained (named in the fired line).
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  // The timeout from now on (the job's, once its options are read); 0: none.
  void set_timeout(double timeout_seconds) { timeout_seconds_.store(timeout_seconds, std::memory_order_relaxed); }
  // The rank's device from now on, as the constructor's `device`.
  void set_device(std::string device);

  // Watches `collective` from now (and names the current step) until a poll
  // finds it done; nothing without a timeout. Any thread.
  void track(std::shared_ptr<WatchedCollective> collective);
  // `check` returns a non-empty error text once what it checks has failed;
  // it runs on the watchdog thread every poll, for the watchdog's lifetime.
  void add_health_check(std::function<std::string()> check);

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
  // The outermost open Scope's name, or null: names collectives started
  // inside it.
  const char* scope_name() const;

 private:
  struct InFlight {
    std::shared_ptr<WatchedCollective> collective;
    int64_t since_ns;
    int64_t step;
  };

  void watch();
  // One pass over everything watched, under mutex_: what failed (the fired
  // line after "rank R (GPU g): "), or empty. Drops completed collectives.
  std::string check();
  // Prints "dtrain: error: WHO: FAILURE; aborting the job", runs the abort
  // action and ends the process. `who` is "rank R (device)".
  [[noreturn]] void fire(const std::string& who, const std::string& failure);

  std::atomic<double> timeout_seconds_;
  const int rank_;
  std::function<void()> on_timeout_;
  std::atomic<int> depth_{0};
  std::atomic<const char*> what_{nullptr};
  std::atomic<int64_t> since_ns_{0};  // steady clock; 0: not in a scope
  std::atomic<int64_t> step_{-1};
  std::mutex mutex_;  // guards what follows
  std::string device_;
  std::vector<InFlight> in_flight_;
  std::vector<std::function<std::string()>> health_checks_;
  std::condition_variable stop_signal_;
  bool stopping_ = false;
  std::thread thread_;
};

// --collective-timeout for a whole job, as main() wires it (and the GPU stall
// test, tests/gpu/nccl_stall.cpp, so the test checks this wiring): a watchdog
// that starts right after MPI_Init, so that every collective is watched, the
// start-up all-gathers included, with the default timeout until the job's
// options give theirs (set_timeout). When it fires it aborts the training
// backend attached to it, then the MPI job. Detaches from `bootstrap` (MPI)
// when destroyed, so it must go before it.
class JobWatchdog {
 public:
  JobWatchdog(double timeout_seconds, Communicator& bootstrap);
  ~JobWatchdog();
  JobWatchdog(const JobWatchdog&) = delete;
  JobWatchdog& operator=(const JobWatchdog&) = delete;

  void set_timeout(double timeout_seconds) { watchdog_.set_timeout(timeout_seconds); }

  // The training backend (`comm`, which may be `bootstrap` itself) reports to
  // the watchdog and is aborted first when it fires, while the Attachment
  // lives; `device` names the rank's GPU in the fired line ("" on CPUs).
  class Attachment {
   public:
    Attachment(JobWatchdog& job, Communicator& comm, std::string device);
    ~Attachment();
    Attachment(const Attachment&) = delete;
    Attachment& operator=(const Attachment&) = delete;

   private:
    JobWatchdog& job_;
    Communicator& comm_;
  };

 private:
  Communicator& bootstrap_;
  std::mutex attached_mutex_;  // held while the abort uses attached_
  Communicator* attached_ = nullptr;
  CollectiveWatchdog watchdog_;
};

}  // namespace dtrain
