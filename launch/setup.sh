#!/usr/bin/env bash
# Sets up dtrain on a Debian bookworm machine: installs the Debian packages it
# needs (only those missing; apt-get update only then), then configures and
# builds a Release build in build/. Safe to run again: a second run installs
# nothing and rebuilds only what changed.
#
#   launch/setup.sh            packages + build
#   DTRAIN_BUILD_DIR=dir       build somewhere else (default: build/)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${DTRAIN_BUILD_DIR:-$ROOT/build}

PACKAGES=(
  g++ make cmake ccache                    # toolchain
  libtorch-dev                             # LibTorch 1.13 (CPU)
  libopenblas0-openmp                      # ~17x faster than the reference BLAS libtorch links otherwise
  libopenmpi-dev openmpi-bin               # MPI backend and mpirun
  libboost-program-options-dev             # CLI and config files
  libgtest-dev                             # tests
  nlohmann-json3-dev zlib1g-dev            # metrics JSON, gzip IDX files
  dataset-fashion-mnist                    # the default dataset
  python3-torch                            # PyTorch peer for interop tests (/usr/bin/python3)
)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
echo "setup: building in $BUILD_DIR (log: $BUILD_DIR/build.log)"
if ! cmake --build "$BUILD_DIR" -j2 >"$BUILD_DIR/build.log" 2>&1; then
  grep -E "error|Error" "$BUILD_DIR/build.log" | head -30
  echo "setup: build failed; the full log is $BUILD_DIR/build.log" >&2
  exit 1
fi
