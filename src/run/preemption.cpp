// The signal handlers and the per-step agreement on a stop or a timed
// checkpoint.
#include "run/preemption.h"

#include "comm/watchdog.h"

#include <ATen/ATen.h>

#include <atomic>
#include <csignal>

namespace dtrain {

namespace {

// Lock-free, so safe in a signal handler, and race-free between the thread
// the signal lands on and the one that reads it.
std::atomic<int> first_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void on_preemption_signal(int signal) {
  int none = 0;
  first_signal.compare_exchange_strong(none, signal);
}

}  // namespace

void install_preemption_handlers() {
  struct sigaction action {};
  action.sa_handler = on_preemption_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // interrupted reads and writes continue
  for (int signal : {SIGUSR1, SIGTERM, SIGINT}) sigaction(signal, &action, nullptr);
}

int preemption_signal() { return first_signal.load(); }
void raise_preemption_flag(int signal) { first_signal.store(signal); }
void clear_preemption_flag() { first_signal.store(0); }

StopAgreement::StopAgreement(Communicator& comm, double checkpoint_every_minutes)
    : comm_(comm), every_seconds_(checkpoint_every_minutes * 60), last_checkpoint_(std::chrono::steady_clock::now()) {}

StepDecision StopAgreement::decide() {
  const bool due = every_seconds_ > 0 && comm_.rank() == 0 &&
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint_).count() >=
                       every_seconds_;
  const bool signalled = preemption_signal() != 0;
  if (comm_.world_size() == 1) return {signalled, due};
  // Two flags in one MAX all-reduce of two bytes (on the CPU: the MPI
  // communicator is always there, whatever backend trains).
  at::Tensor flags = at::tensor({static_cast<int32_t>(signalled), static_cast<int32_t>(due)}, at::kInt);
  CollectiveWatchdog::Scope watched(comm_.watchdog(), "stop-agreement all-reduce");
  comm_.all_reduce(flags, ReduceOp::Max);
  const int32_t* value = flags.data_ptr<int32_t>();
  return {value[0] != 0, value[1] != 0};
}

void StopAgreement::checkpoint_written() { last_checkpoint_ = std::chrono::steady_clock::now(); }

}  // namespace dtrain
