#!/usr/bin/env bash
# Builds (if needed) and runs dtrain's benchmarks side by side: tables on
# stdout, JSON in runs/bench/bench.json. With a torch 2.x venv and build-torch2
# present (launch/setup.sh --torch2), also dtrain on LibTorch 2.x vs DDP 2.x.
# Arguments go to bench/run_bench.py (e.g. --repeats 5, --only memory). Takes ~20 minutes,
# plus ~11 for the activation-checkpointing section (--only checkpointing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/launch/setup.sh"
exec python3 "$ROOT/bench/run_bench.py" "$@"
