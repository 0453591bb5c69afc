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

# Under CI=true a skip is a failure: CI's machine has what these tests need
# (root, two CPUs, tmpfs), so a skip there would hide a test that never ran.
# Elsewhere it exits 77, which ctest counts as skipped (SKIP_RETURN_CODE 77).
skip_or_fail() {  # REASON
  [ "${CI:-}" != true ] || fail "skipped under CI=true, where it must run: $*"
  echo "skip: $*"
  exit 77
}

# A part of a test that cannot run here: fails at once under CI=true; else
# the rest runs and finish_skips ends the test with exit 77 naming it.
SKIPPED_PARTS=()
skip_part() {  # REASON
  [ "${CI:-}" != true ] || fail "skipped under CI=true, where it must run: $*"
  echo "skip: $*"
  SKIPPED_PARTS+=("$*")
}
finish_skips() {  # NAME: after the last check
  [ "${#SKIPPED_PARTS[@]}" -eq 0 ] && { echo "$1: all passed"; return 0; }
  echo "$1: the rest passed; skipped: $(IFS=';'; echo "${SKIPPED_PARTS[*]}")"
  exit 77
}

# Waits until OUT_DIR/metrics.jsonl has a record of step STEP; returns 1
# if JOB_PID (the job's mpirun) ends first or after WAIT_S seconds (default
# 300, with a margin for AddressSanitizer's 2-5x slower runs). A step record
# also proves that every rank has its preemption handlers (main() installs
# them before any collective, and the step's all-reduce needs every rank).
wait_for_step() {  # OUT_DIR STEP [JOB_PID] [WAIT_S]
  local deadline=$((SECONDS + ${4:-300}))
  while [ "$SECONDS" -lt "$deadline" ]; do
    grep -q "\"step\":$2," "$1/metrics.jsonl" 2>/dev/null && return 0
    if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
      grep -q "\"step\":$2," "$1/metrics.jsonl" 2>/dev/null && return 0
      echo "the job ended before step $2" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "no step $2 in $1/metrics.jsonl after ${4:-300} s" >&2
  return 1
}

# The pid of rank RANK of the job writing to OUT_DIR: the dtrain process
# itself, not a shell that wraps it.
rank_pid() {  # OUT_DIR RANK
  local pid
  for pid in $(pgrep -f -- "dtrain .*--out-dir $1( |\$)" || true); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dtrain ] || continue
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$pid"
      return
    fi
  done
}

# The resume line main.cpp prints for the checkpoint of step STEP in
# CHECKPOINT_DIR: proof that a run resumed there and did not start afresh
# (--resume auto starts afresh when it finds no valid checkpoint).
expect_resumed() {  # LOG CHECKPOINT_DIR STEP WHAT
  local name
  name=$(printf 'step-%08d' "$3")
  grep -q -F "resuming from $2/$name at step $3 of " "$1" \
    || { grep -i "resum" "$1" >&2; fail "$4: no 'resuming from $2/$name at step $3' line"; }
}
