#!/usr/bin/env bash
# Sets up dtrain on a Debian bookworm machine: installs the Debian packages it
# needs (only those missing; apt-get update only then), then configures and
# builds a Release build in build/. Safe to run again: a second run installs
# nothing and rebuilds only what changed.
#
#   launch/setup.sh            packages + build against Debian's LibTorch 1.13 (build/)
#   launch/setup.sh --torch2   also build against the CUDA LibTorch 2.x inside the
#                              PyPI torch wheel (build-torch2/). The wheel and its
#                              NVIDIA libraries (~5 GB) go to a cached venv,
#                              $DTRAIN_TORCH2_VENV (default ~/.cache/dtrain/torch2-venv),
#                              installed once.
#   launch/setup.sh --sanitize also build with AddressSanitizer and
#                              UndefinedBehaviorSanitizer (build-asan/), without
#                              the NCCL backend (CUDA's runtime and ASan's shadow
#                              memory do not mix, and no GPU runs it here)
#   launch/setup.sh --tsan     also build with ThreadSanitizer (build-tsan/), the
#                              binaries of the threaded tests only (launch/test.sh --tsan)
#   launch/setup.sh --fuzz     also build the libFuzzer harnesses with clang
#                              (build-fuzz/; see docs/reliability.md)
#   launch/setup.sh --dtrain-only   packages + only the dtrain binary (what
#                              launch/train.sh runs: the first run skips the
#                              test binaries, which launch/test.sh builds)
#   DTRAIN_BUILD_DIR=dir       build somewhere else (default: build/)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${DTRAIN_BUILD_DIR:-$ROOT/build}
WITH_TORCH2=0
WITH_SANITIZE=0
WITH_TSAN=0
WITH_FUZZ=0
MAIN_TARGETS=()
for arg in "$@"; do
  case "$arg" in
    --torch2) WITH_TORCH2=1 ;;
    --sanitize) WITH_SANITIZE=1 ;;
    --tsan) WITH_TSAN=1 ;;
    --fuzz) WITH_FUZZ=1 ;;
    --dtrain-only) MAIN_TARGETS=(--target dtrain) ;;
    *) echo "setup: unknown argument $arg (known: --torch2, --sanitize, --tsan, --fuzz, --dtrain-only)" >&2; exit 2 ;;
  esac
done
TORCH2_BUILD_DIR=${DTRAIN_TORCH2_BUILD_DIR:-$ROOT/build-torch2}
SANITIZE_BUILD_DIR=${DTRAIN_SANITIZE_BUILD_DIR:-$ROOT/build-asan}
TSAN_BUILD_DIR=${DTRAIN_TSAN_BUILD_DIR:-$ROOT/build-tsan}
FUZZ_BUILD_DIR=${DTRAIN_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}

PACKAGES=(
  g++ make cmake ccache                    # toolchain
  libtorch-dev                             # LibTorch 1.13 (CPU)
  libopenblas0-openmp                      # ~17x faster than the reference BLAS libtorch links otherwise
  libopenmpi-dev openmpi-bin               # MPI backend and mpirun
  libboost-program-options-dev             # CLI and config files
  libgtest-dev                             # tests
  nlohmann-json3-dev zlib1g-dev            # metrics JSON, gzip IDX files
  libssl-dev                               # SHA-256 of older checkpoints (OpenSSL)
  libxxhash-dev libdeflate-dev             # checkpoint files' XXH3-128, zip CRC-32
  dataset-fashion-mnist                    # the default dataset
  python3-torch                            # PyTorch peer for interop tests (/usr/bin/python3)
  python3-numpy python3-matplotlib         # the study driver's fit and plots (launch/study.sh)
  bible-kjv                                # the King James Bible (bible -f gen1:1-rev22:21): language-model text
  slurm-wlm munge                          # the one-node Slurm cluster of tests/cluster/slurm_e2e.sh
  iproute2 nftables                        # two nodes in network namespaces, and faults between them (tests/cluster/netns.sh)
)
# The fuzz harnesses: clang 14 and its libFuzzer runtime.
[ "$WITH_FUZZ" = 1 ] && PACKAGES+=(clang libclang-rt-14-dev)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  # With recommends: the combination this project is tested with.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ccache hashes paths relative to the checkout, so a fresh clone (CI) finds
# what an earlier build of the same sources compiled. Unity batches
# (CMakeLists.txt) include their sources by absolute path, so that holds for
# a clone at the same path only.
export CCACHE_BASEDIR="$ROOT"

# build DIR [cmake configure arguments...]: configure once, then build
# $TARGETS (all when empty).
TARGETS=()
build() {
  local dir=$1
  shift
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  fi
  echo "setup: building ${TARGETS[*]:-everything} in $dir (log: $dir/build.log)"
  if ! cmake --build "$dir" -j2 "${TARGETS[@]}" >"$dir/build.log" 2>&1; then
    grep -E "error|Error" "$dir/build.log" | head -30
    echo "setup: build failed; the full log is $dir/build.log" >&2
    exit 1
  fi
}

TARGETS=("${MAIN_TARGETS[@]}")
build "$BUILD_DIR"
TARGETS=()

if [ "$WITH_SANITIZE" = 1 ]; then
  # -O1, as the sanitizers' docs advise: our code is a small part of what a
  # test runs (LibTorch and OpenBLAS are not instrumented), and it compiles
  # in about half the time of -O3. Only the binaries the sanitized suite runs
  # (launch/test.sh leaves out the tests labelled "once" there).
  TARGETS=(--target dtrain dtrain_unit_tests dtrain_mpi_tests dtrain_logits dtrain_tied)
  build "$SANITIZE_BUILD_DIR" -DDTRAIN_SANITIZE=address,undefined -DDTRAIN_WITH_NCCL=OFF \
    -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG"
  TARGETS=()
fi
if [ "$WITH_TSAN" = 1 ]; then
  # ThreadSanitizer, -O1 with line tables (-g1) so that a report names the
  # lines. The binaries of the threaded tests only: the unit tests, the
  # multi-rank tests and dtrain (launch/test.sh --tsan picks the tests).
  TARGETS=(--target dtrain dtrain_unit_tests dtrain_mpi_tests)
  build "$TSAN_BUILD_DIR" -DDTRAIN_SANITIZE=thread -DDTRAIN_WITH_NCCL=OFF \
    -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1 -DNDEBUG"
  TARGETS=()
fi
if [ "$WITH_FUZZ" = 1 ]; then
  # Only the harnesses: the library code they need, compiled by clang with
  # -fsanitize=fuzzer,address,undefined.
  if [ ! -f "$FUZZ_BUILD_DIR/CMakeCache.txt" ]; then
    CC=clang CXX=clang++ cmake -S "$ROOT" -B "$FUZZ_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DDTRAIN_FUZZ=ON -DDTRAIN_BUILD_TESTS=OFF -DDTRAIN_WITH_NCCL=OFF >/dev/null ||
      { rm -f "$FUZZ_BUILD_DIR/CMakeCache.txt"; echo "setup: configuring the fuzz build failed" >&2; exit 1; }
  fi
  echo "setup: building the fuzz harnesses in $FUZZ_BUILD_DIR (log: $FUZZ_BUILD_DIR/build.log)"
  if ! cmake --build "$FUZZ_BUILD_DIR" -j2 --target fuzz_harnesses >"$FUZZ_BUILD_DIR/build.log" 2>&1; then
    grep -E "error|Error" "$FUZZ_BUILD_DIR/build.log" | head -30
    echo "setup: fuzz build failed; the full log is $FUZZ_BUILD_DIR/build.log" >&2
    exit 1
  fi
fi

if [ "$WITH_TORCH2" = 1 ]; then
  TORCH2_PYTHON=$("$ROOT/launch/torch2_venv.sh")
  TORCH2_ROOT=$("$TORCH2_PYTHON" -c "import os, torch; print(os.path.dirname(torch.__file__))" 2>/dev/null)
  TORCH2_CMAKE=$("$TORCH2_PYTHON" -c "import torch.utils; print(torch.utils.cmake_prefix_path)" 2>/dev/null)
  echo "setup: LibTorch $("$TORCH2_PYTHON" -c "import torch; print(torch.__version__)" 2>/dev/null) from $TORCH2_ROOT"
  # The package root too, so CMake finds the wheel's libtorch.so before
  # Debian's; and the NCCL the wheel was built with, which LibTorch links.
  nccl_args=()
  [ -d "$TORCH2_ROOT/../nvidia/nccl/lib" ] && nccl_args=(-DNCCL_HOME="$(cd "$TORCH2_ROOT/../nvidia/nccl" && pwd)")
  build "$TORCH2_BUILD_DIR" -DCMAKE_PREFIX_PATH="$TORCH2_CMAKE;$TORCH2_ROOT" "${nccl_args[@]}"
fi
