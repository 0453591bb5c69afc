# Shared by the end-to-end tests. Usage in a test: source it, with the dtrain
# binary and mpirun as $1 and $2 (ctest passes them).
set -euo pipefail
DTRAIN=${1:?path to the dtrain binary}
MPIRUN_BIN=${2:-mpirun}
PYTHON=/usr/bin/python3   # Debian's python3-torch; the python3 first on PATH has no torch
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

mpirun() { timeout 300 "$MPIRUN_BIN" --oversubscribe --bind-to none "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# expect_error EXIT_CODE TEXT -- COMMAND...: the command must exit with
# EXIT_CODE (any non-zero if "nonzero"), print exactly one "dtrain: error:"
# line containing TEXT, and no stack trace.
expect_error() {
  local want=$1 text=$2
  shift 3
  local code=0
  "$@" >"$WORK/out" 2>"$WORK/err" || code=$?
  if [ "$want" = nonzero ]; then
    [ "$code" -ne 0 ] || fail "exit 0 from: $*"
  else
    [ "$code" -eq "$want" ] || { cat "$WORK/err" >&2; fail "exit $code (wanted $want) from: $*"; }
  fi
  local lines
  lines=$(grep -c '^dtrain: error:' "$WORK/err" || true)
  [ "$lines" -eq 1 ] || { cat "$WORK/err" >&2; fail "$lines error lines (wanted 1) from: $*"; }
  grep -q -F -- "$text" "$WORK/err" || { cat "$WORK/err" >&2; fail "error does not mention '$text': $*"; }
  if grep -q -E 'Exception raised from|frame #|terminate called|Segmentation' "$WORK/err"; then
    cat "$WORK/err" >&2
    fail "stack trace or crash from: $*"
  fi
  pass "$(grep '^dtrain: error:' "$WORK/err")"
}

# Waits (up to 30 s) until OUT_DIR/metrics.jsonl has a record of step STEP.
wait_for_step() {  # OUT_DIR STEP
  local _
  for _ in $(seq 600); do
    grep -q "\"step\":$2," "$1/metrics.jsonl" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# The pid of rank RANK of the job writing to OUT_DIR.
rank_pid() {  # OUT_DIR RANK
  local pid
  for pid in $(pgrep -f -- "dtrain .*--out-dir $1( |\$)" || true); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$pid"
      return
    fi
  done
}
