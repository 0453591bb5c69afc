#!/usr/bin/env bash
# Runs a batch-size study (docs/studies.md): the grid of a study file, then
# results.csv, fit.json and report.md in its out dir. Sets up first (packages
# and the build, launch/setup.sh) only when there is no dtrain binary yet.
#
#   launch/study.sh configs/studies/fashion_mnist_batch.ini [--quick] [--out DIR]
#   launch/study.sh STUDY.ini --executor slurm [--wait]     # one Slurm job array
#   launch/study.sh STUDY.ini --aggregate-only              # results of what has run
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$ROOT/build/dtrain" ] || "$ROOT/launch/setup.sh"
# mpirun refuses root unless told; harmless for other users.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Debian's python3 (numpy, matplotlib from apt), not whatever is first on PATH.
exec /usr/bin/python3 "$ROOT/study/study.py" "$@"
