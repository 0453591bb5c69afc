#!/usr/bin/env bash
# Runs dtrain's libFuzzer harnesses (tests/fuzz/; docs/reliability.md).
#
#   launch/fuzz.sh HARNESS MINUTES [libFuzzer flags]   one campaign
#   launch/fuzz.sh all MINUTES                         each harness in turn
#
# HARNESS: idx, config, option_values, weights or checkpoint. MINUTES 0 replays the
# regression inputs and the seed corpus only, without fuzzing. Builds the harnesses first
# (launch/setup.sh --fuzz). Each run first replays the harness's regression
# inputs (tests/fuzz/regressions/HARNESS/: every crash found, kept) and its
# seed corpus, then fuzzes for MINUTES (fractions allowed) with a fixed seed
# (DTRAIN_FUZZ_SEED, default 1), one process at a time. Runs are bounded in
# time, so how far the same seed gets depends on the machine.
# New corpus units go to runs/fuzz/HARNESS/corpus, findings to
# runs/fuzz/HARNESS/ (crash-*, timeout-*, oom-*); the checked-in seed corpus
# is never written. Limits: 10 s per input, 2 GiB of memory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESSES=(idx config option_values weights checkpoint)
[ $# -ge 2 ] || { echo "usage: launch/fuzz.sh idx|config|option_values|weights|checkpoint|all MINUTES [libFuzzer flags]" >&2; exit 2; }
target=$1
minutes=$2
shift 2
if [ "$target" = all ]; then
  selected=("${HARNESSES[@]}")
else
  [[ " ${HARNESSES[*]} " == *" $target "* ]] || { echo "fuzz: unknown harness $target (known: ${HARNESSES[*]})" >&2; exit 2; }
  selected=("$target")
fi
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "fuzz: MINUTES must be a number, e.g. 20 or 0.5 (got '$minutes')" >&2; exit 2; }
seconds=$(awk -v m="$minutes" 'BEGIN { s = int(m * 60); if (s < 1) s = 1; print s }')
"$ROOT/launch/setup.sh" --fuzz >/dev/null
FUZZ_BUILD=${DTRAIN_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
# LeakSanitizer: leaks whose allocation lies wholly in LibTorch (not
# instrumented) are silenced by tests/sanitizers/lsan.supp.
# The user's own settings come first; the suppressions are always added.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:allocator_may_return_null=1"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$ROOT/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}halt_on_error=1:print_stacktrace=1"

for harness in "${selected[@]}"; do
  out="$ROOT/runs/fuzz/$harness"
  mkdir -p "$out/corpus"
  regressions="$ROOT/tests/fuzz/regressions/$harness"
  if compgen -G "$regressions/*" >/dev/null; then
    echo "== fuzz $harness: replaying $(ls "$regressions" | wc -l) regression input(s)"
    "$FUZZ_BUILD/fuzz_$harness" -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$out/" "$regressions"/* \
      >"$out/replay.log" 2>&1 || {
        tail -n 40 "$out/replay.log"
        echo "fuzz: $harness fails on a kept regression input (see $out/replay.log)" >&2
        exit 1
      }
  fi
  if [ "$minutes" = 0 ]; then
    echo "== fuzz $harness: replaying the seed corpus only"
    "$FUZZ_BUILD/fuzz_$harness" -runs=0 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$out/" \
      "$ROOT/tests/fuzz/corpus/$harness" >"$out/log" 2>&1 || { tail -n 40 "$out/log"; exit 1; }
    echo "fuzz $harness: ok (replay)"
    continue
  fi
  echo "== fuzz $harness: ${seconds}s, seed ${DTRAIN_FUZZ_SEED:-1}"
  "$FUZZ_BUILD/fuzz_$harness" -seed="${DTRAIN_FUZZ_SEED:-1}" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/" "$@" \
    "$out/corpus" "$ROOT/tests/fuzz/corpus/$harness" >"$out/log" 2>&1 || {
      tail -n 40 "$out/log"
      echo "fuzz: $harness found a problem; the input is in $out/ (see docs/reliability.md)" >&2
      exit 1
    }
  # The last status line has the coverage; the final stats the executions.
  status=$(grep -E '^#[0-9]+' "$out/log" | tail -n 1 || true)
  execs=$(grep -E 'stat::number_of_executed_units' "$out/log" | awk '{print $2}' || true)
  echo "fuzz $harness: ok, $execs executions in ${seconds}s; last status: $status"
done
