#!/usr/bin/env bash
# Sets up if needed, builds, and runs the whole test suite through ctest:
# unit tests, multi-rank tests under mpirun at 1, 2 and 4 ranks, and the
# end-to-end tests of the dtrain binary, against Debian's LibTorch 1.13.
#
#   launch/test.sh --with-torch2   also builds against the CUDA LibTorch 2.x of
#                                  the PyPI torch wheel and runs the same suite
#                                  there (what CI runs; see launch/setup.sh)
# Other arguments go to ctest (e.g. launch/test.sh -R mpi).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
builds=("${DTRAIN_BUILD_DIR:-$ROOT/build}")
setup_args=()
ctest_args=()
for arg in "$@"; do
  if [ "$arg" = --with-torch2 ]; then
    setup_args+=(--torch2)
    builds+=("${DTRAIN_TORCH2_BUILD_DIR:-$ROOT/build-torch2}")
  else
    ctest_args+=("$arg")
  fi
done
"$ROOT/launch/setup.sh" "${setup_args[@]}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for build in "${builds[@]}"; do
  echo "== tests in $build"
  ctest --test-dir "$build" --output-on-failure "${ctest_args[@]}"
done
