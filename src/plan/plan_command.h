// `dtrain plan`: predicts time-to-target across global batches and rank
// counts and recommends a split (docs/studies.md, "Planning the batch").
//
//   dtrain plan --config CONFIG [training options] --max-ranks N
//               (--fit STUDY/fit.json | --noise-scale-json FILE | --steps S_MIN:B_CRIT)
//               [--network ALPHA_S,BETA_S_PER_BYTE | --measure-network] [--deadline SECONDS] [--out DIR]
//
// It measures on this machine what it predicts from: each micro-batch's
// compute at world 1 with the run's threads per rank (rank 0 computes while
// the others wait; the auto micro-batch probe, timed), one optimizer update,
// and under mpirun the all-reduce's alpha and beta over all the ranks it was
// started with, and how much of it the backend overlaps with compute. It
// never times a data-parallel step (that would make the prediction
// circular). The arithmetic is in plan/plan_model.h.
#pragma once
#include "comm/mpi_communicator.h"

#include <string>
#include <vector>

namespace dtrain {

class JobWatchdog;

// `args` after "plan"; `watchdog` watches its collectives (main()'s). Returns the exit code; throws AgreedFailure after a
// reported error, like the training entry point.
int run_plan(MpiCommunicator& mpi, JobWatchdog& watchdog, const std::vector<std::string>& args);

}  // namespace dtrain
