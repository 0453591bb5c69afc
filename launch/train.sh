#!/usr/bin/env bash
# Sets up if needed, then runs the default job: an MLP on Fashion-MNIST on 2
# ranks. Extra arguments go to dtrain (e.g. launch/train.sh --epochs 2).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Only the binary this job runs: launch/test.sh builds the test binaries.
"$ROOT/launch/setup.sh" --dtrain-only
cd "$ROOT"
# mpirun refuses root unless told; harmless for other users.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
command=(mpirun -np 2 build/dtrain --config configs/fashion_mnist_mlp.ini "$@")
echo "+ ${command[*]}"
exec "${command[@]}"
