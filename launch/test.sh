#!/usr/bin/env bash
# Sets up if needed, builds, and runs the whole test suite through ctest:
# unit tests, multi-rank tests under mpirun at 1, 2 and 4 ranks, and the
# end-to-end tests of the dtrain binary. Extra arguments go to ctest
# (e.g. launch/test.sh -R mpi).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/launch/setup.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "${DTRAIN_BUILD_DIR:-$ROOT/build}" --output-on-failure "$@"
