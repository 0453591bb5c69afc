#!/usr/bin/env bash
# GPU checks, for a host with NVIDIA GPUs (CI machines have none, so CI only
# compiles and links this path). Builds dtrain against the CUDA LibTorch of
# the PyPI torch wheel, then:
#   1. the communicator tests, NCCL included, on every visible GPU;
#   2. the equivalence test (NCCL vs the CPU reference) on 2 GPUs, if there are 2;
#   3. one epoch of the default job on the GPUs.
# Usage: tests/gpu/run_gpu_checks.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v nvidia-smi >/dev/null || { echo "run_gpu_checks: no nvidia-smi: this host has no NVIDIA driver" >&2; exit 1; }
GPUS=$(nvidia-smi -L | wc -l)
[ "$GPUS" -ge 1 ] || { echo "run_gpu_checks: no GPU visible" >&2; exit 1; }
echo "run_gpu_checks: $GPUS GPU(s)"

"$ROOT/launch/setup.sh" --torch2
BUILD=${DTRAIN_TORCH2_BUILD_DIR:-$ROOT/build-torch2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --bind-to none)

echo "== communicator tests on $GPUS GPU(s)"
"${MPIRUN[@]}" -np "$GPUS" "$BUILD/tests/dtrain_mpi_tests" --gtest_filter='Nccl.*:Communicator.*'
# The NCCL tests must have run, not skipped.
"${MPIRUN[@]}" -np "$GPUS" "$BUILD/tests/dtrain_mpi_tests" --gtest_filter='Nccl.CollectivesOnGpus' 2>&1 \
  | tee /dev/stderr | grep -q "SKIPPED" && { echo "run_gpu_checks: the NCCL test skipped" >&2; exit 1; }

if [ "$GPUS" -ge 2 ]; then
  echo "== equivalence across 2 GPUs"
  "${MPIRUN[@]}" -np 2 "$BUILD/tests/dtrain_mpi_tests" --gtest_filter='Equivalence.*'
fi

echo "== one epoch of the default job on $GPUS GPU(s)"
"${MPIRUN[@]}" -np "$GPUS" "$BUILD/dtrain" --config "$ROOT/configs/fashion_mnist_mlp.ini" --device cuda --backend nccl \
  --epochs 1 --out-dir "${TMPDIR:-/tmp}/dtrain_gpu_check"
echo "run_gpu_checks: all passed"
