# Failure handling, end to end (docs/checkpoints.md):
#   non-finite losses (--on-nonfinite stop|skip) at 1 and 2 ranks, a NaN on one
#   rank only included; a rank hung in a collective, in one of the step
#   agreements during start-up and mid-run; a full disk during a checkpoint, an export and the
#   metrics; and bad input for the checkpoint options, each one line.
source "$(dirname "$0")/common.sh"
COMMON=(--dataset synthetic --synthetic-train-samples 1024 --synthetic-test-samples 256 --micro-batch-size 16
        --log-every 4)
SMALL=("${COMMON[@]}" --hidden 32)

# --- Non-finite values ----------------------------------------------------
# stop: every rank stops at that step, exit 3, status diverged.
expect_error 3 "diverged at step 6 (loss nan, gradient norm nan, lr " -- \
  env DTRAIN_FAULT_NAN_STEP=6:1 "$MPIRUN_BIN" --oversubscribe --bind-to none -np 2 "$DTRAIN" "${SMALL[@]}" \
  --out-dir "$WORK/nan2"
grep -q '"status": "diverged"' "$WORK/nan2/summary.json" || fail "summary status is not diverged"
grep -q '"steps": 6,' "$WORK/nan2/summary.json" || fail "summary does not stop at step 6"
pass "a NaN on rank 1 only at step 6: both ranks stopped there, exit 3, status diverged"
expect_error 3 "diverged at step" -- "$DTRAIN" "${SMALL[@]}" --lr 1e5 --out-dir "$WORK/lr"
grep -q '"status": "diverged"' "$WORK/lr/summary.json" || fail "--lr 1e5 summary is not diverged"
# skip: no rank updates on that step; the run goes on. A checkpoint after
# every step, to compare the weights before and after the skipped one.
env DTRAIN_FAULT_NAN_STEP=6:1 "$MPIRUN_BIN" --oversubscribe --bind-to none -np 2 "$DTRAIN" "${SMALL[@]}" \
  --on-nonfinite skip --checkpoint-every 1 --keep-checkpoints 1000 --out-dir "$WORK/skip" --export "$WORK/skip.pt" \
  >"$WORK/skip.log" 2>&1 || { cat "$WORK/skip.log"; fail "skip run failed"; }
grep -q '"status": "completed"' "$WORK/skip/summary.json" || fail "skip run not completed"
grep -q '"skipped_steps": 1,' "$WORK/skip/summary.json" || fail "the skip was not counted"
grep -q '"event":"skip".*"step":6' "$WORK/skip/metrics.jsonl" || fail "the skip was not logged"
grep -q "step 6: non-finite loss nan or gradient norm nan at lr .*: update skipped (1 in a row)" "$WORK/skip.log" \
  || fail "no skip line"
# The NaN reached no weight.
"$PYTHON" - "$WORK/skip.pt" <<'PY' || fail "weights after a skipped step are not finite"
import sys, torch
assert all(torch.isfinite(t).all() for t in torch.load(sys.argv[1]).values())
PY
# The skipped step changed no weight; the steps around it did.
weights() { printf '%s/skip/checkpoints/step-%08d/model.pt' "$WORK" "$1"; }
for step in 4 5 6 7; do [ -f "$(weights $step)" ] || fail "no checkpoint of step $step"; done
cmp -s "$(weights 5)" "$(weights 6)" || fail "the skipped step 6 changed model.pt (steps 5 and 6 differ)"
cmp -s "$(weights 4)" "$(weights 5)" && fail "step 5 changed no weight: the comparison proves nothing"
cmp -s "$(weights 6)" "$(weights 7)" && fail "step 7 changed no weight: training did not go on after the skip"
pass "--on-nonfinite skip: step 6 skipped on both ranks, counted, logged; model.pt of steps 5 and 6 bitwise equal; the run completed with finite weights"
# ignore: no check, the old behaviour (the run goes on and completes).
"$DTRAIN" "${SMALL[@]}" --lr 1e5 --on-nonfinite ignore --out-dir "$WORK/ignore" >/dev/null 2>&1 \
  || fail "--on-nonfinite ignore stopped the run"
grep -q '"status": "completed"' "$WORK/ignore/summary.json" || fail "--on-nonfinite ignore did not complete"
expect_error 3 "after 10 non-finite steps in a row" -- "$DTRAIN" "${SMALL[@]}" --lr 1e5 --on-nonfinite skip \
  --out-dir "$WORK/skip10"
grep -q '"skipped_steps": 10,' "$WORK/skip10/summary.json" || fail "not 10 skips before diverging"

# --- A hung collective ------------------------------------------------------
# Rank 1 stops (SIGSTOP) mid-run: rank 0 waits in a collective until
# --collective-timeout, then its watchdog names the step and the collective
# and aborts the job, within the timeout + 30 s.
mpirun -np 2 "$DTRAIN" "${COMMON[@]}" --hidden 32 --epochs 5000 --collective-timeout 5 --out-dir "$WORK/hang" \
  >"$WORK/hang.log" 2>&1 &
job=$!
wait_for_step "$WORK/hang" 100 $job || { cat "$WORK/hang.log"; fail "the hang test never reached step 100"; }
stopped=$(rank_pid "$WORK/hang" 1)
[ -n "$stopped" ] || fail "could not find rank 1 of the hang test"
kill -STOP "$stopped"
stopped_at=$(date +%s)
code=0
wait $job || code=$?
elapsed=$(( $(date +%s) - stopped_at ))
kill -CONT "$stopped" 2>/dev/null || true
[ "$code" -ne 0 ] || fail "a job with a stopped rank exited 0"
[ "$elapsed" -le 35 ] || fail "the job took $elapsed s to end (timeout 5 s + 30 s allowed)"
grep -q "^dtrain: error: rank 0: the .* at step [0-9]* has not completed after [0-9]* s (--collective-timeout)" \
  "$WORK/hang.log" || { tail -20 "$WORK/hang.log"; fail "no watchdog line from rank 0"; }
pass "SIGSTOP of rank 1: $(grep -o 'the [a-z-]* all-reduce at step [0-9]*' "$WORK/hang.log" | head -1) timed out; job gone ${elapsed} s after the stop (exit $code)"

# --- A rank that hangs where the old watchdog did not look ---------------------
# DTRAIN_FAULT_STALL=NAME:1 stops rank 1 for good just before the exchange of
# an agreed step: during start-up (the CPU-share agreement, before the
# training backend exists) and mid-run (a checkpoint's agreement). Rank 0's
# watchdog names that step; the job is gone within the timeout + 30 s, with
# no process left.
for stall in "CPU-share agreement:during start-up" "checkpoint agreement:at step [0-9]*"; do
  step=${stall%%:*} when=${stall#*:}
  out=$WORK/stall-${step%% *}
  started=$(date +%s)
  code=0
  env DTRAIN_FAULT_STALL="$step:1" timeout -k 5 120 "$MPIRUN_BIN" --oversubscribe --bind-to none -np 2 "$DTRAIN" "${SMALL[@]}" \
    --checkpoint-every 5 --collective-timeout 3 --out-dir "$out" >"$out.log" 2>&1 || code=$?
  elapsed=$(( $(date +%s) - started ))
  [ "$code" -ne 0 ] || fail "a job with rank 1 stalled in the $step exited 0"
  [ "$code" -ne 124 ] && [ "$code" -ne 137 ] || fail "a job with rank 1 stalled in the $step hung until killed: its exchange is not watched"
  [ "$elapsed" -le 33 ] || fail "a job with rank 1 stalled in the $step took $elapsed s to end (3 s + 30 s allowed)"
  grep -q "^fault: rank 1 stalls before the $step" "$out.log" || { cat "$out.log"; fail "the $step stall did not happen"; }
  grep -q "^dtrain: error: rank 0: the $step $when has not completed after 3 s (--collective-timeout)" "$out.log" \
    || { tail -20 "$out.log"; fail "no watchdog line naming the $step from rank 0"; }
  sleep 1
  [ -z "$(pgrep -f -- "--out-dir $out( |\$)")" ] || fail "processes left after the $step stall"
  pass "rank 1 stalled before the $step's exchange: rank 0's watchdog named it $(grep -o "the $step [a-z-]* *[a-z0-9 -]*has not" "$out.log" | head -n 1 | sed "s/ has not//"); job gone after ${elapsed} s (exit $code)"
done

# --- Full disks -------------------------------------------------------------
mnt=$WORK/small-disk
mkdir -p "$mnt"
if mount -t tmpfs -o size=1200k tmpfs "$mnt" 2>/dev/null; then
  trap 'umount "$mnt" 2>/dev/null || true; rm -rf "$WORK"' EXIT
  # One checkpoint of this model is ~0.8 MB: the first fits, the second does not.
  # model.pt and optimizer.pt are written in parallel: either may hit the limit.
  expect_error 1 ".pt: No space left on device" -- "$DTRAIN" "${COMMON[@]}" --hidden 100 --checkpoint-every 10 \
    --checkpoint-dir "$mnt/ckpt" --keep-checkpoints 5 --out-dir "$WORK/full"
  grep -q "cannot write $mnt/ckpt/step-00000020.tmp/[a-z]*.pt: No space" "$WORK/err" || fail "not the step-20 write"
  [ "$(ls "$mnt/ckpt")" = step-00000010 ] || fail "a failed checkpoint left $(ls "$mnt/ckpt")"
  "$DTRAIN" "${COMMON[@]}" --hidden 100 --checkpoint-dir "$mnt/ckpt" --out-dir "$WORK/full" --resume auto \
    --max-steps 12 >"$WORK/full2.log" 2>&1 || { cat "$WORK/full2.log"; fail "the earlier checkpoint does not load"; }
  grep -q "resuming from $mnt/ckpt/step-00000010 at step 10" "$WORK/full2.log" || fail "did not resume from step 10"
  pass "a full disk during a checkpoint: one line, and the earlier checkpoint still resumes"
  head -c 1100k /dev/zero >"$mnt/filler" 2>/dev/null || true
  expect_error 1 "final.pt.tmp: No space left on device (exporting weights" -- "$DTRAIN" "${COMMON[@]}" --hidden 100 \
    --out-dir "$WORK/export" --export "$mnt/final.pt"
  expect_error 1 "out/config.json.tmp: No space left on device" -- "$DTRAIN" "${SMALL[@]}" --out-dir "$mnt/out"
  umount "$mnt"
else
  skip_part "full-disk cases need a tmpfs mount (root)"
fi

# --- Bad input --------------------------------------------------------------
touch "$WORK/a-file"
expect_error 2 "--checkpoint-every must be >= 0 (got -1)" -- "$DTRAIN" "${SMALL[@]}" --checkpoint-every -1
expect_error 2 "--checkpoint-every-minutes must be in [0, 10000000] (got -5)" -- "$DTRAIN" "${SMALL[@]}" --checkpoint-every-minutes -5
expect_error 2 "--keep-checkpoints must be positive (got 0)" -- "$DTRAIN" "${SMALL[@]}" --keep-checkpoints 0
expect_error 2 "--checkpoint-every" -- "$DTRAIN" "${SMALL[@]}" --checkpoint-every ten
expect_error 2 "--on-nonfinite warn is not one of stop|skip|ignore" -- "$DTRAIN" "${SMALL[@]}" --on-nonfinite warn
expect_error 2 "--resume must not be empty" -- "$DTRAIN" "${SMALL[@]}" --resume ""
expect_error 2 "--resume $WORK/nowhere is not a checkpoint folder" -- "$DTRAIN" "${SMALL[@]}" --resume "$WORK/nowhere"
expect_error 1 "--checkpoint-dir $WORK/a-file is a file, not a folder" -- "$DTRAIN" "${SMALL[@]}" \
  --checkpoint-every 5 --checkpoint-dir "$WORK/a-file"
expect_error 1 "--out-dir $WORK/a-file is a file, not a folder" -- "$DTRAIN" "${SMALL[@]}" --out-dir "$WORK/a-file"
# A checkpoint to damage in several ways.
"$DTRAIN" "${SMALL[@]}" --checkpoint-every 10 --max-steps 20 --out-dir "$WORK/good" >/dev/null 2>&1 || fail "no checkpoint"
ck=$WORK/good/checkpoints/step-00000020
expect_error 2 "--resume $ck.tmp is an unfinished checkpoint" -- "$DTRAIN" "${SMALL[@]}" --resume "$ck.tmp"
expect_error 2 "these settings change the training trajectory: --model mlp -> cnn" -- "$DTRAIN" "${COMMON[@]}" \
  --resume "$ck" --model cnn --hidden ""
expect_error 2 "--optimizer sgd -> adamw" -- "$DTRAIN" "${SMALL[@]}" --resume "$ck" --optimizer adamw
expect_error 2 "is at step 20, past --max-steps 10; raise --max-steps" -- "$DTRAIN" "${SMALL[@]}" --resume "$ck" \
  --max-steps 10 --out-dir "$WORK/good2"
damaged() {  # NAME EDIT: a copy of the checkpoint, edited by the Python statement EDIT (d = folder)
  local copy=$WORK/damaged-$1
  cp -r "$ck" "$copy"
  "$PYTHON" - "$copy" "$2" <<'PY'
import hashlib, json, os, sys
d = sys.argv[1]
exec(sys.argv[2])
PY
  echo "$copy"
}
# Rewrites the manifest to match the files, so only the content check
# catches a change. It hashes with SHA-256 and names no hash, as dtrain did
# before XXH3-128 (Python has no XXH3 here): these resumes also read that
# older manifest.
REHASH='
def rehash(name):
    m = json.load(open(d + "/manifest.json"))
    assert m.pop("hash") == "xxh3-128"
    for each in m["files"]:
        data = open(d + "/" + each, "rb").read()
        m["files"][each] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    json.dump(m, open(d + "/manifest.json", "w"))
'
copy=$(damaged manifest 'open(d + "/manifest.json", "w").write("{not json")')
expect_error 1 "$copy is damaged: manifest.json is not valid JSON" -- "$DTRAIN" "${SMALL[@]}" --resume "$copy"
copy=$(damaged format 'm = json.load(open(d + "/manifest.json")); m["format"] = 99; json.dump(m, open(d + "/manifest.json", "w"))')
expect_error 1 "has format 99, this dtrain reads format 1" -- "$DTRAIN" "${SMALL[@]}" --resume "$copy"
copy=$(damaged missing 'os.remove(d + "/model.pt")')
expect_error 1 "$copy is damaged: model.pt is missing or unreadable" -- "$DTRAIN" "${SMALL[@]}" --resume "$copy"
copy=$(damaged field "$REHASH"'
t = json.load(open(d + "/trainer.json")); del t["loss_steps"]; json.dump(t, open(d + "/trainer.json", "w")); rehash("trainer.json")')
expect_error 1 "trainer.json lacks a field or has a wrong type" -- "$DTRAIN" "${SMALL[@]}" --resume "$copy"
copy=$(damaged model "$REHASH"'
import shutil; shutil.copy(d + "/optimizer.pt", d + "/model.pt"); rehash("model.pt")')
expect_error 1 "model.pt does not match the model (missing hidden.0.weight" -- "$DTRAIN" "${SMALL[@]}" --resume "$copy"
copy=$(damaged optimizer "$REHASH"'
import shutil; shutil.copy(d + "/model.pt", d + "/optimizer.pt"); rehash("optimizer.pt")')
expect_error 1 "optimizer.pt does not match the optimizer" -- "$DTRAIN" "${SMALL[@]}" --resume "$copy"
finish_skips failures
