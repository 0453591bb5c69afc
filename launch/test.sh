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
#   launch/test.sh --gpu-kit       also prepares the GPU acceptance kit and
#                                  rehearses it (tests/gpu/kit.sh, docs/gpu.md):
#                                  a build against the CUDA LibTorch 2.x of the
#                                  PyPI torch wheel from the kit's packages alone,
#                                  with this machine's copies hidden, and the
#                                  binaries and jobs there (needs root)
#   launch/test.sh --fuzz          also runs the idx, config, option_values, checkpoint and
#                                  weights harnesses for 15 s each (checkpoint 30 s) with a fixed
#                                  seed, after replaying their regression inputs
# CI runs --gpu-kit, --sanitize and --fuzz (.ci/run). Other arguments go to ctest (e.g. -R mpi).
# Tests labelled "once" (the study driver, the Slurm cluster) run in the first
# build only.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
builds=("${DTRAIN_BUILD_DIR:-$ROOT/build}")
setup_args=()
ctest_args=()
fuzz=0
gpu_kit=0
for arg in "$@"; do
  case "$arg" in
    --with-torch2) setup_args+=(--torch2); builds+=("${DTRAIN_TORCH2_BUILD_DIR:-$ROOT/build-torch2}") ;;
    --sanitize) setup_args+=(--sanitize); builds+=("${DTRAIN_SANITIZE_BUILD_DIR:-$ROOT/build-asan}") ;;
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
if [ "$gpu_kit" = 1 ]; then
  echo "== the GPU acceptance kit: prepare and rehearse"
  "$ROOT/tests/gpu/kit.sh" prepare
  "$ROOT/tests/gpu/kit.sh" rehearse
fi
if [ "$fuzz" = 1 ]; then
  for harness in idx config option_values weights; do "$ROOT/launch/fuzz.sh" "$harness" 0.25; done
  "$ROOT/launch/fuzz.sh" checkpoint 0.5  # manifest.json and trainer.json: 30 s
fi
