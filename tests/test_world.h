// For the multi-rank test binary: the world communicator that its MPI-aware
// main() (tests/mpi_test_main.cpp) creates. Tests run on every rank, in the
// same order, so collectives inside tests line up.
#pragma once
#include "comm/communicator.h"

namespace dtrain::testing {
Communicator& world();
// True on every rank iff NCCL is in the build and every rank has a GPU of
// its own (a collective: call it on every rank). GPU tests skip together on
// its false.
bool every_rank_has_a_gpu();
}
