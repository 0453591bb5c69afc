#!/usr/bin/env bash
# Sets up if needed, builds, and runs the whole test suite through ctest:
# unit tests, multi-rank tests under mpirun at 1, 2 and 4 ranks, and the
# end-to-end tests of the dtrain binary, against Debian's LibTorch 1.13.
#
#   launch/test.sh --with-torch2   also builds against the CUDA LibTorch 2.x of
#                                  the PyPI torch wheel and runs the same suite
#                                  there (see launch/setup.sh)
#   launch/test.sh --sanitize      also builds with AddressSanitizer and
#                                  UndefinedBehaviorSanitizer (build-asan/, on
#                                  Debian's LibTorch) and runs the same suite,
#                                  multi-rank tests included, halting on the
#                                  first report (tests/sanitizers/ holds the
#                                  suppressions for uninstrumented libraries)
#   launch/test.sh --tsan          also builds with ThreadSanitizer (build-tsan/,
#                                  on Debian's LibTorch) and runs the tests whose
#                                  code starts threads: the unit tests, the
#                                  multi-rank tests at 2 ranks, and the
#                                  end-to-end tests of the watchdog, preemption
#                                  and the out-of-memory path (TSAN_TESTS below)
#   launch/test.sh --gpu-kit       also prepares the GPU acceptance kit and
#                                  rehearses it (tests/gpu/kit.sh, docs/gpu.md):
#                                  a build against the CUDA LibTorch 2.x of the
#                                  PyPI torch wheel from the kit's packages alone,
#                                  with this machine's copies hidden, and the
#                                  binaries and jobs there (needs root)
#   launch/test.sh --fuzz          also runs the idx, config, option_values, checkpoint and
#                                  weights harnesses for 15 s each (checkpoint 30 s) with a fixed
#                                  seed, after replaying their regression inputs
# CI runs --gpu-kit, --sanitize, --tsan and --fuzz (.ci/run). Other arguments go to ctest (e.g. -R mpi).
# Tests labelled "once" (the study driver, the Slurm cluster) run in the first
# build only.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
builds=("${DTRAIN_BUILD_DIR:-$ROOT/build}")
setup_args=()
ctest_args=()
fuzz=0
gpu_kit=0
tsan=0
tsan_build=${DTRAIN_TSAN_BUILD_DIR:-$ROOT/build-tsan}
for arg in "$@"; do
  case "$arg" in
    --with-torch2) setup_args+=(--torch2); builds+=("${DTRAIN_TORCH2_BUILD_DIR:-$ROOT/build-torch2}") ;;
    --sanitize) setup_args+=(--sanitize); builds+=("${DTRAIN_SANITIZE_BUILD_DIR:-$ROOT/build-asan}") ;;
    --tsan) setup_args+=(--tsan); tsan=1 ;;
    --fuzz) fuzz=1 ;;
    --gpu-kit) gpu_kit=1 ;;
    *) ctest_args+=("$arg") ;;
  esac
done
"$ROOT/launch/setup.sh" "${setup_args[@]}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for build in "${builds[@]}"; do
  echo "== tests in $build"
  # Tests labelled "once" exercise scripts around the binary (the study
  # driver, the Slurm cluster): once, against Debian's LibTorch, is enough.
  label_args=()
  [ "$build" = "${builds[0]}" ] || label_args=(-LE once)
  if grep -q "^DTRAIN_SANITIZE:STRING=.\+" "$build/CMakeCache.txt" 2>/dev/null; then
    (
      # Halt on the first report; suppressions only for uninstrumented libraries.
      # No test allocates 2 GiB: a larger request is a size taken from bad input.
      export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:max_allocation_size_mb=2048:suppressions=$ROOT/tests/sanitizers/asan.supp"
      export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$ROOT/tests/sanitizers/ubsan.supp"
      export LSAN_OPTIONS="suppressions=$ROOT/tests/sanitizers/lsan.supp:print_suppressions=0"
      # Open MPI's memory hooks (the patcher) intercept malloc and mmap, which
      # ASan must own.
      export OMPI_MCA_memory=^patcher
      ctest --test-dir "$build" --output-on-failure "${label_args[@]}" "${ctest_args[@]}"
    )
  else
    ctest --test-dir "$build" --output-on-failure "${label_args[@]}" "${ctest_args[@]}"
  fi
done
if [ "$tsan" = 1 ]; then
  # The tests whose code starts threads: the watchdog's, the non-finite
  # check's helper, the preemption signal's agreement, the out-of-memory
  # path's agreement, and the MPI communicator's, at 2 ranks (the 1- and
  # 4-rank runs start the same threads). The list wins over a -R given to
  # this script (ctest keeps the last).
  TSAN_TESTS='^(unit|mpi_np2|e2e_failures|e2e_checkpoint|e2e_memory)$'
  echo "== ThreadSanitizer: the threaded tests in $tsan_build"
  (
    # Halt on the first report; suppressions only for uninstrumented libraries.
    # ignore_noninstrumented_modules=1: LibTorch, OpenBLAS and Open MPI are
    # not instrumented, so TSan sees none of their loads and stores and none
    # of OpenMP's barriers, only their calls to memset and memcpy, which it
    # then reports against the tensor's allocation (a worker's sgemm_beta
    # against c10::alloc_cpu). The flag ignores those calls' accesses and
    # keeps their locks; dtrain's own code is checked in full
    # (tests/sanitizers/tsan_test.cpp shows a race it must still report).
    # atexit_sleep_ms=0: TSan's default second of sleep in exit() would
    # outlast the watchdog's abort bound, which its tests check.
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:atexit_sleep_ms=0:suppressions=$ROOT/tests/sanitizers/tsan.supp"
    export OMPI_MCA_memory=^patcher  # Open MPI's malloc hooks: TSan must own malloc
    export DTRAIN_EXPECT_TSAN=1  # tests/sanitizers/tsan_test.cpp fails in a build without TSan
    ctest --test-dir "$tsan_build" --output-on-failure "${ctest_args[@]}" -R "$TSAN_TESTS"
  )
fi
if [ "$gpu_kit" = 1 ]; then
  echo "== the GPU acceptance kit: prepare and rehearse"
  "$ROOT/tests/gpu/kit.sh" prepare
  "$ROOT/tests/gpu/kit.sh" rehearse
fi
if [ "$fuzz" = 1 ]; then
  for harness in idx config option_values weights; do "$ROOT/launch/fuzz.sh" "$harness" 0.25; done
  "$ROOT/launch/fuzz.sh" checkpoint 0.5  # manifest.json and trainer.json: 30 s
fi
