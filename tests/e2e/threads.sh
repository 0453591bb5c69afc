# --threads auto from the CPUs a rank owns, with the exact launch lines of
# docs/configuration.md: taskset, OMP_NUM_THREADS, mpirun bound and unbound.
# ctest sets OMP_NUM_THREADS=1 for every test; these unset it.
source "$(dirname "$0")/common.sh"
unset OMP_NUM_THREADS
# The launch lines name CPUs 0 and 1: this process must be allowed both.
taskset -c 0,1 true 2>/dev/null && [ "$(nproc)" -ge 2 ] || skip_or_fail "threads: needs CPUs 0 and 1"
SYN=(--dataset synthetic --synthetic-train-samples 256 --synthetic-test-samples 64 --micro-batch-size 32
     --max-steps 2 --hidden 16 --out-dir "$WORK/run")

# expect_threads "TEXT" -- COMMAND...: the start-up line contains TEXT.
expect_threads() {
  local text=$1
  shift 2
  "$@" >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "exit non-zero: $*"; }
  local line
  line=$(grep '^dtrain: ' "$WORK/out" | head -1)
  [[ "$line" == *"$text"* ]] || { echo "$line"; fail "wanted '$text' from: $*"; }
  pass "${*:1:4}...: ${line#*; }"
}

expect_threads "; 1 thread(s) per rank (1 CPU in this rank's affinity mask; 1 rank on this host)" -- \
  taskset -c 0 "$DTRAIN" "${SYN[@]}"
expect_threads "buckets after backward; 2 thread(s) per rank (2 CPUs in this rank's affinity mask; 1 rank on this host)" -- \
  taskset -c 0,1 "$DTRAIN" "${SYN[@]}"
expect_threads "; 1 thread(s) per rank (OMP_NUM_THREADS=1)" -- \
  env OMP_NUM_THREADS=1 taskset -c 0,1 "$DTRAIN" "${SYN[@]}"
expect_threads "; 3 thread(s) per rank (--threads 3)" -- taskset -c 0,1 "$DTRAIN" "${SYN[@]}" --threads 3
# Unbound ranks share the node; bound ranks (Open MPI's default for -np 2) own a core each.
expect_threads "; 1 thread(s) per rank (2 CPUs in this rank's affinity mask, shared by 2 ranks; 2 ranks on this host)" -- \
  taskset -c 0,1 "$MPIRUN_BIN" -np 2 --bind-to none "$DTRAIN" "${SYN[@]}"
expect_threads "; 1 thread(s) per rank (1 CPU in this rank's affinity mask; 2 ranks on this host)" -- \
  "$MPIRUN_BIN" -np 2 "$DTRAIN" "${SYN[@]}"
# MPI overlap needs a CPU for the communication thread: forced on with one CPU each, it takes it.
expect_threads "overlapped buckets; 1 thread(s) per rank + 1 for communication" -- \
  taskset -c 0,1 "$MPIRUN_BIN" -np 2 --bind-to none "$DTRAIN" "${SYN[@]}" --overlap true
# config.json records what ran; --dump-config keeps auto.
"$DTRAIN" "${SYN[@]}" --dump-config >"$WORK/dump.ini" || fail "--dump-config failed"
grep -qx "threads = auto" "$WORK/dump.ini" || fail "--dump-config froze threads"
grep -q '"threads":1\|"threads": 1' "$WORK/run/config.json" || { cat "$WORK/run/config.json"; fail "config.json lacks resolved threads"; }
pass "--dump-config keeps threads = auto; config.json records the resolved count"
echo "threads: all passed"
