# Checkpoints, exact resume and preemption (docs/checkpoints.md), end to end:
#   1. same split: a run stopped by --max-steps, by SIGUSR1 (sent to one rank
#      only, a second one raised inside the checkpoint write) or by kill -9,
#      then continued with --resume auto from the step it stopped at, or
#      from a timed checkpoint (--checkpoint-every-minutes), ends with the
#      bitwise-identical weights and the same train/eval records as one
#      uninterrupted run; SIGTERM and SIGINT to one rank stop every rank
#      with exit 75, as SIGUSR1 does;
#   2. another split of the same global batch (4 ranks -> 2 with double
#      accumulation, 2 -> 1, another micro-batch) resumes from each stop and
#      continues within 1e-5;
#   3. settings that change the trajectory are refused, old -> new; others
#      (logging, threads, checkpoint settings) may change, and the run resumes;
#   4. damaged checkpoints: --resume auto falls back to an older one with a
#      warning naming the file; --resume PATH names the file and the check.
source "$(dirname "$0")/common.sh"
# The settings in a file, so that the command line can override them.
cat >"$WORK/base.ini" <<'INI'
dataset = synthetic
synthetic-train-samples = 4096
synthetic-test-samples = 256
global-batch-size = 64
epochs = 12
hidden = 128,64
log-every = 8
eval-every = 50
schedule = cosine
warmup-steps = 10
seed = 3
INI
BASE=(--config "$WORK/base.ini")
# AdamW for the exact cases: its state (two moments and a step count per
# tensor) is the most to get right.
EXACT=("${BASE[@]}" --optimizer adamw)
# The uninterrupted reference: 768 steps, at 2 ranks x micro 16 x accum 2.
mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/ref" --export "$WORK/ref.pt" \
  >"$WORK/ref.log" 2>&1 || { cat "$WORK/ref.log"; fail "reference run failed"; }

# The train and eval records without their timings.
records() {
  "$PYTHON" - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1] + "/metrics.jsonl"):
    r = json.loads(line)
    if r["event"] in ("train", "eval"):
        for timing in ("samples_per_sec", "elapsed_sec"):
            r.pop(timing, None)
        print(json.dumps(r, sort_keys=True))
PY
}
same_as_reference() {  # DIR WEIGHTS WHAT
  cmp -s "$WORK/ref.pt" "$2" || fail "$3: weights differ from the uninterrupted run"
  diff <(records "$WORK/ref") <(records "$1") >"$WORK/diff" || { head "$WORK/diff"; fail "$3: metrics differ"; }
  pass "$3: bitwise-identical weights, $(records "$1" | wc -l) identical train/eval records"
}

# 1a. --max-steps with checkpoints on writes one at its last step.
mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/a" --checkpoint-every 40 --max-steps 70 \
  >/dev/null 2>&1 || fail "stopped run failed"
[ -d "$WORK/a/checkpoints/step-00000070" ] || fail "no checkpoint at the --max-steps stop"
[ "$(ls "$WORK/a/checkpoints" | wc -l)" -eq 2 ] || fail "--keep-checkpoints 2 kept $(ls "$WORK/a/checkpoints")"
mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/a" --checkpoint-every 40 --resume auto \
  --export "$WORK/a.pt" >"$WORK/a.log" 2>&1 || { cat "$WORK/a.log"; fail "resumed run failed"; }
expect_resumed "$WORK/a.log" "$WORK/a/checkpoints" 70 "--max-steps 70, then --resume auto"
same_as_reference "$WORK/a" "$WORK/a.pt" "--max-steps 70, then --resume auto"
# PyTorch reads a checkpoint's tensor files: the weights under --export's
# names, the optimizer state under the parameters' names.
"$PYTHON" - "$WORK/a/checkpoints/step-00000760" "$WORK/a.pt" <<'PY' || fail "torch.load cannot read the checkpoint"
import sys, torch
model = torch.load(sys.argv[1] + "/model.pt", weights_only=True)  # PyTorch 2.6+ loads so by default
exported = torch.load(sys.argv[2], weights_only=True)
assert list(model) == list(exported), (list(model), list(exported))
assert all(model[k].shape == exported[k].shape and model[k].dtype == exported[k].dtype for k in model)
optimizer = torch.load(sys.argv[1] + "/optimizer.pt", weights_only=True)
for name in model:
    for field in ("exp_avg", "exp_avg_sq"):
        assert optimizer[f"{name}.{field}"].shape == model[name].shape, (name, field)
    assert optimizer[f"{name}.step"].item() == 760
print(f"torch.load: model.pt ({len(model)} tensors, --export's names) and optimizer.pt ({len(optimizer)} tensors)")
PY

# 1b. SIGUSR1 to rank 1 only: every rank stops at the same step, exit 75.
# A second signal lands inside the checkpoint write: the test hook
# DTRAIN_FAULT_SIGNAL_IN_CHECKPOINT=1 makes the writing rank raise SIGUSR1
# after the tensor files and before trainer.json and the manifest, and say
# so on stderr. It must corrupt nothing: the resume below verifies every
# file's XXH3-128 and continues bitwise.
DTRAIN_FAULT_SIGNAL_IN_CHECKPOINT=1 mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/b" \
  >"$WORK/b.log" 2>&1 &
job=$!
# A step record: the handlers are installed on every rank (wait_for_step).
wait_for_step "$WORK/b" 24 $job || { cat "$WORK/b.log"; fail "the SIGUSR1 run never reached step 24"; }
rank1=$(rank_pid "$WORK/b" 1)
[ -n "$rank1" ] || fail "could not find rank 1 (did the run end after step 24?)"
kill -USR1 "$rank1"
code=0
wait $job || code=$?
[ "$code" -eq 75 ] || { cat "$WORK/b.log"; fail "preempted job exited $code, wanted 75"; }
grep -q "preempted at step [0-9]*; checkpoint $WORK/b/checkpoints/step-[0-9]*; resume with --resume auto" "$WORK/b.log" \
  || { cat "$WORK/b.log"; fail "no preemption line"; }
grep -q '"status": "preempted"' "$WORK/b/summary.json" || fail "summary status is not preempted"
stopped=$(sed -n 's/.*preempted at step \([0-9]*\);.*/\1/p' "$WORK/b.log")
[ "$stopped" -lt 768 ] || fail "stopped at $stopped: the signal came too late"
stopped_dir=$(printf '%s/b/checkpoints/step-%08d' "$WORK" "$stopped")
grep -q -F "fault: SIGUSR1 raised inside the write of $stopped_dir.tmp" "$WORK/b.log" \
  || { cat "$WORK/b.log"; fail "no second signal inside the step-$stopped checkpoint write (DTRAIN_FAULT_SIGNAL_IN_CHECKPOINT)"; }
mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/b" --resume auto --export "$WORK/b.pt" \
  >"$WORK/b2.log" 2>&1 || { cat "$WORK/b2.log"; fail "resume after preemption failed"; }
expect_resumed "$WORK/b2.log" "$WORK/b/checkpoints" "$stopped" "SIGUSR1, then --resume auto"
grep -q '"status": "completed"' "$WORK/b/summary.json" || fail "resumed run not completed"
# Logging every step differs from the reference's --log-every 8: compare weights only.
cmp -s "$WORK/ref.pt" "$WORK/b.pt" || fail "SIGUSR1 to one rank at step $stopped, resumed: weights differ"
pass "SIGUSR1 to rank 1 only, a second one inside the checkpoint write: both ranks stopped at step $stopped (exit 75); resumed from it bitwise"

# 1c. kill -TERM of rank 0, kill -INT of rank 1: preemptions like SIGUSR1's.
# Each rank runs under a shell that records its own exit code, and mpirun
# lets every rank finish (orte_abort_on_non_zero_status 0) instead of ending
# the others when the first exits 75. (With that setting mpirun itself exits
# 0: the ranks' own codes are the check; 1b checks mpirun's 75.) A rank the
# signal killed would leave the other waiting in a collective: the watchdog
# (--collective-timeout 60) then ends it, and the test fails in a minute.
cat >"$WORK/rank_exit.sh" <<'SH'
code=0
"$@" || code=$?
echo "$code" >"$RANK_EXIT_DIR/rank-$OMPI_COMM_WORLD_RANK"
exit "$code"
SH
for signal_rank in TERM:0 INT:1; do
  signal=${signal_rank%:*} rank=${signal_rank#*:} out=$WORK/sig-${signal_rank%:*}
  mkdir -p "$out.exit"
  RANK_EXIT_DIR=$out.exit mpirun --mca orte_abort_on_non_zero_status 0 -np 2 bash "$WORK/rank_exit.sh" \
    "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --collective-timeout 60 --out-dir "$out" >"$out.log" 2>&1 &
  job=$!
  wait_for_step "$out" 16 $job || { cat "$out.log"; fail "the SIG$signal run never reached step 16"; }
  victim=$(rank_pid "$out" "$rank")
  [ -n "$victim" ] || fail "could not find rank $rank (did the run end after step 16?)"
  kill "-$signal" "$victim"
  wait $job || true
  for r in 0 1; do
    [ "$(cat "$out.exit/rank-$r" 2>/dev/null)" = 75 ] \
      || { cat "$out.log"; fail "SIG$signal to rank $rank: rank $r exited $(cat "$out.exit/rank-$r" 2>/dev/null || echo '(no code)'), wanted 75"; }
  done
  grep -q "preempted at step [0-9]*; checkpoint $out/checkpoints/step-[0-9]*; resume with --resume auto" "$out.log" \
    || { cat "$out.log"; fail "SIG$signal: no preemption line"; }
  at=$(sed -n 's/.*preempted at step \([0-9]*\);.*/\1/p' "$out.log")
  [ -f "$(printf '%s/checkpoints/step-%08d/manifest.json' "$out" "$at")" ] || fail "SIG$signal: no checkpoint of step $at"
  grep -q '"status": "preempted"' "$out/summary.json" || fail "SIG$signal: summary status is not preempted"
  pass "SIG$signal to rank $rank only: both ranks stopped at step $at and exited 75, with its checkpoint"
done

# 1d. kill -9 of a rank: the job ends within 30 s, non-zero; resume from the
# last periodic checkpoint is bitwise.
mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/c" --checkpoint-every 25 \
  --keep-checkpoints 100 >"$WORK/c.log" 2>&1 &
job=$!
victim=
deadline=$((SECONDS + 300))  # a bound for AddressSanitizer's slower runs; the job's end fails at once
until [ -n "$victim" ] && [ -d "$WORK/c/checkpoints/step-00000050" ]; do
  kill -0 $job 2>/dev/null && [ "$SECONDS" -lt "$deadline" ] \
    || { cat "$WORK/c.log"; fail "no step-50 checkpoint (or no rank 1) before the run ended or 300 s passed"; }
  [ -n "$victim" ] || victim=$(rank_pid "$WORK/c" 1)
  sleep 0.05
done
killed_at=$(date +%s)
kill -9 "$victim"
code=0
wait $job || code=$?
elapsed=$(( $(date +%s) - killed_at ))
[ "$code" -ne 0 ] || fail "a job with a killed rank exited 0"
[ "$elapsed" -le 30 ] || fail "the job took $elapsed s to end after kill -9"
sleep 1
[ -z "$(rank_pid "$WORK/c" 0)" ] || fail "rank 0 left running after kill -9 of rank 1"
# The newest checkpoint the killed run finished (an unfinished .tmp is removed).
newest=$(find "$WORK/c/checkpoints" -mindepth 1 -maxdepth 1 -name 'step-*' ! -name '*.tmp' | sort | tail -1)
newest=${newest##*step-}
newest=$((10#$newest))
mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/c" --checkpoint-every 25 --resume auto \
  --export "$WORK/c.pt" >"$WORK/c2.log" 2>&1 || { cat "$WORK/c2.log"; fail "resume after kill -9 failed"; }
expect_resumed "$WORK/c2.log" "$WORK/c/checkpoints" "$newest" "kill -9, then --resume auto"
same_as_reference "$WORK/c" "$WORK/c.pt" "kill -9 of a rank (job gone in ${elapsed} s, exit $code), resumed from step $newest"

# 1e. Timed checkpoints: --checkpoint-every-minutes 0.002 (every 0.12 s on
# rank 0's clock, no step count) writes several during the run, not one per
# step; a resume from the oldest continues bitwise.
mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/t" --checkpoint-every-minutes 0.002 \
  --keep-checkpoints 1000 >"$WORK/t.log" 2>&1 || { cat "$WORK/t.log"; fail "timed-checkpoint run failed"; }
timed=$( { find "$WORK/t/checkpoints" -mindepth 1 -maxdepth 1 -name 'step-*' ! -name '*.tmp' 2>/dev/null || true; } \
  | sed 's/.*step-0*//' | sort -n)
count=$(echo "$timed" | grep -c . || true)
[ "$count" -ge 2 ] || { cat "$WORK/t.log"; fail "$count timed checkpoint(s) in a run of $(grep -o '[0-9.]* s training' "$WORK/t.log"), wanted 2 or more"; }
[ "$count" -le 384 ] || fail "$count timed checkpoints in 768 steps: the clock does not restart after each"
oldest=$(echo "$timed" | head -1)
mpirun -np 2 "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/t" \
  --resume "$(printf '%s/t/checkpoints/step-%08d' "$WORK" "$oldest")" --export "$WORK/t.pt" >"$WORK/t2.log" 2>&1 \
  || { cat "$WORK/t2.log"; fail "resume from a timed checkpoint failed"; }
expect_resumed "$WORK/t2.log" "$WORK/t/checkpoints" "$oldest" "a timed checkpoint"
same_as_reference "$WORK/t" "$WORK/t.pt" "--checkpoint-every-minutes 0.002: $count checkpoints (steps $(echo $timed | cut -c1-60)...), resumed from step $oldest"

# 2. Another split of the same global batch continues within float
# reassociation. With SGD: AdamW divides by the root of tiny second moments,
# so a different split alone (uninterrupted) moves its weights by ~1e-4
# relative over 192 steps (docs/checkpoints.md).
SPLIT=("${BASE[@]}" --optimizer sgd --epochs 3)
mpirun -np 2 "$DTRAIN" "${SPLIT[@]}" --micro-batch-size 16 --out-dir "$WORK/sgd" --export "$WORK/sgd.pt" \
  >/dev/null 2>&1 || fail "SGD reference run failed"
close_to_reference() {  # WEIGHTS WHAT
  "$PYTHON" - "$WORK/sgd.pt" "$1" <<'PY' || fail "$2: weights not within 1e-5 of the uninterrupted run"
import sys, torch
a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
worst = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)).item() for k in a)
print(f"max relative difference {worst:.2e}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
  pass "$2"
}
mpirun -np 4 "$DTRAIN" "${SPLIT[@]}" --micro-batch-size 16 --out-dir "$WORK/d" --checkpoint-every 30 --max-steps 60 \
  >/dev/null 2>&1 || fail "4-rank run failed"
mpirun -np 2 "$DTRAIN" "${SPLIT[@]}" --micro-batch-size 16 --out-dir "$WORK/d" --checkpoint-every 30 --max-steps 120 \
  --resume auto >"$WORK/d.log" 2>&1 || { cat "$WORK/d.log"; fail "4 -> 2 ranks resume failed"; }
expect_resumed "$WORK/d.log" "$WORK/d/checkpoints" 60 "4 -> 2 ranks"
grep -q "micro 16 x accum 2 x world 2" "$WORK/d.log" || fail "not double accumulation after 4 -> 2"
"$DTRAIN" "${SPLIT[@]}" --micro-batch-size 64 --out-dir "$WORK/d" --checkpoint-every 30 --resume auto \
  --export "$WORK/d.pt" >"$WORK/d2.log" 2>&1 || { cat "$WORK/d2.log"; fail "2 -> 1 rank resume failed"; }
expect_resumed "$WORK/d2.log" "$WORK/d/checkpoints" 120 "2 ranks -> 1"
grep -q "micro 64 x accum 1 x world 1" "$WORK/d2.log" || fail "not micro 64 after 2 -> 1"
close_to_reference "$WORK/d.pt" "4 ranks -> 2 ranks (accum 1 -> 2) -> 1 rank (micro 64)"

# 3. Trajectory changes are refused, each old -> new; neutral ones are not.
expect_error 2 "--lr 0.1 -> 0.2, --hidden 128,64 -> 128" -- \
  "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/a" --resume auto --lr 0.2 --hidden 128
expect_error 2 "--global-batch-size 64 -> 128" -- \
  "$DTRAIN" "${EXACT[@]}" --global-batch-size 128 --micro-batch-size 16 --out-dir "$WORK/a" --resume auto
expect_error 2 "--epochs 12 -> 13" -- \
  "$DTRAIN" "${EXACT[@]}" --micro-batch-size 16 --out-dir "$WORK/a" --resume auto --epochs 13
"$DTRAIN" "${EXACT[@]}" --micro-batch-size 32 --out-dir "$WORK/a" --resume auto --log-every 3 --threads 2 \
  --keep-checkpoints 5 --eval-every 0 --max-steps 765 >"$WORK/neutral.log" 2>&1 \
  || { cat "$WORK/neutral.log"; fail "a neutral change was refused"; }
expect_resumed "$WORK/neutral.log" "$WORK/a/checkpoints" 760 "neutral changes"
pass "logging, threads, checkpoint settings and the split may change on resume"
# A horizon-free schedule may train longer.
CONSTANT=(--dataset synthetic --synthetic-train-samples 1024 --synthetic-test-samples 256 --micro-batch-size 32
          --hidden 32 --schedule constant --checkpoint-every 10 --lr 0.05)
"$DTRAIN" "${CONSTANT[@]}" --epochs 1 --out-dir "$WORK/e" >/dev/null 2>&1 || fail "constant run failed"
"$DTRAIN" "${CONSTANT[@]}" --epochs 2 --out-dir "$WORK/e" --resume auto >"$WORK/e.log" 2>&1 \
  || { cat "$WORK/e.log"; fail "--epochs 1 -> 2 refused with a constant schedule"; }
expect_resumed "$WORK/e.log" "$WORK/e/checkpoints" 30 "--epochs 1 -> 2"
pass "--epochs may grow when the schedule does not depend on it"

# A fresh run into a folder with checkpoints is refused.
expect_error 2 "already holds checkpoints of an earlier run (newest step-00000060); continue it with --resume auto" -- \
  "$DTRAIN" "${CONSTANT[@]}" --epochs 2 --out-dir "$WORK/e"

# 4. Damaged checkpoints.
cp -r "$WORK/e/checkpoints" "$WORK/e-saved"
newest=$WORK/e/checkpoints/step-00000060
truncate -s 100 "$newest/model.pt"
"$DTRAIN" "${CONSTANT[@]}" --epochs 2 --out-dir "$WORK/e" --resume auto >"$WORK/f.log" 2>&1 \
  || { cat "$WORK/f.log"; fail "no fallback to an older checkpoint"; }
grep -q "warning: checkpoint $newest is damaged: model.pt has 100 bytes" "$WORK/f.log" || { cat "$WORK/f.log"; fail "no warning naming model.pt"; }
grep -q "resuming from $WORK/e/checkpoints/step-00000050 " "$WORK/f.log" || fail "did not fall back to step 50"
pass "a truncated model.pt: --resume auto warned and fell back to step 50"
rm -rf "$WORK/e/checkpoints" && cp -r "$WORK/e-saved" "$WORK/e/checkpoints"
printf '\x01' | dd of="$newest/optimizer.pt" bs=1 seek=200 conv=notrunc 2>/dev/null
expect_error 1 "checkpoint $newest is damaged: optimizer.pt fails its XXH3-128 check" -- \
  "$DTRAIN" "${CONSTANT[@]}" --epochs 2 --out-dir "$WORK/e" --resume "$newest"
cp "$WORK/e-saved/step-00000060/optimizer.pt" "$newest/"
rm "$newest/trainer.json"
expect_error 1 "trainer.json is missing or unreadable" -- \
  "$DTRAIN" "${CONSTANT[@]}" --epochs 2 --out-dir "$WORK/e" --resume "$newest"
mkdir -p "$WORK/e/checkpoints/step-00000070.tmp"
"$DTRAIN" "${CONSTANT[@]}" --epochs 2 --out-dir "$WORK/e" --resume auto >"$WORK/g.log" 2>&1 || fail "auto with a .tmp failed"
[ -d "$WORK/e/checkpoints/step-00000070.tmp" ] && fail "a .tmp folder was left"
grep -q "removed 1 unfinished checkpoint folder" "$WORK/g.log" || fail "no note about the .tmp folder"
pass "--resume auto removed an unfinished .tmp folder and never read it"
echo "checkpoint: all passed"
