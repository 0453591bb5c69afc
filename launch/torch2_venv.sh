#!/usr/bin/env bash
# Makes sure the cached virtual environment with the PyPI torch wheel (a CUDA
# build that carries a full LibTorch 2.x and its CMake config) exists, and
# prints its python. Installed once (several GB) into $DTRAIN_TORCH2_VENV
# (default ~/.cache/dtrain/torch2-venv); used by launch/setup.sh --torch2 and
# tests/gpu/kit.sh rehearse.
set -euo pipefail
# The torch wheel dtrain is tested against; change it here and only here.
TORCH2_SPEC=${DTRAIN_TORCH2_SPEC:-torch==2.15.0}
TORCH2_VENV=${DTRAIN_TORCH2_VENV:-$HOME/.cache/dtrain/torch2-venv}
if [ ! -x "$TORCH2_VENV/bin/python" ] || ! "$TORCH2_VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "torch2_venv: installing $TORCH2_SPEC into $TORCH2_VENV (several GB, once)" >&2
  python3 -m venv "$TORCH2_VENV" 2>/dev/null || {
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null && /usr/bin/python3 -m venv "$TORCH2_VENV"; }
  "$TORCH2_VENV/bin/pip" install -q --disable-pip-version-check "$TORCH2_SPEC" >&2
fi
echo "$TORCH2_VENV/bin/python"
