// Preemption: SIGUSR1 (Slurm's --signal), SIGTERM (scancel, time limits,
// Kubernetes) and SIGINT (Ctrl-C) only set a flag. At each optimizer-step
// boundary the ranks agree, in one tiny all-reduce, whether any rank was
// signalled and whether a timed checkpoint is due (rank 0's clock decides), so
// every rank stops or checkpoints at the same step. The trainer then writes a
// checkpoint and exits with kExitPreempted (common/error.h).
#pragma once
#include "comm/communicator.h"

#include <chrono>
#include <cstdint>

namespace dtrain {


// Installs the handlers (idempotent). A second signal while the checkpoint is
// being written is only counted: it does not interrupt the write.
void install_preemption_handlers();

// The signal that arrived first on this rank (0: none).
int preemption_signal();
// For tests: as if `signal` had arrived.
void raise_preemption_flag(int signal);
void clear_preemption_flag();

struct StepDecision {
  bool stop = false;        // some rank was signalled
  bool checkpoint = false;  // a timed checkpoint is due
};

class StopAgreement {
 public:
  // `minutes` = 0: no timed checkpoints.
  StopAgreement(Communicator& comm, double checkpoint_every_minutes);
  // Collective, once per optimizer step on every rank. Free at world size 1.
  StepDecision decide();
  // Restart the checkpoint clock (after any checkpoint).
  void checkpoint_written();

 private:
  Communicator& comm_;
  double every_seconds_;
  std::chrono::steady_clock::time_point last_checkpoint_;
};

}  // namespace dtrain
