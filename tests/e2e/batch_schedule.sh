# Batch-size schedules (--batch-schedule; docs/studies.md), end to end:
#   1. adaptive at 2 ranks: the batch grows at evaluations toward B_simple,
#      at least twice; every train event carries the batch it trained with
#      and the cumulative samples; the LR follows the batch;
#   2. rampup: Megatron's ramp, the LR by the scaling rule or fixed, and a
#      resume from a checkpoint before a change that ends bitwise where the
#      uninterrupted run ends;
#   3. the refusals: a ramp that does not divide, adaptive without the noise
#      scale, a ramp with --micro-batch-size auto.
source "$(dirname "$0")/common.sh"

cat >"$WORK/base.ini" <<'INI'
dataset = synthetic
synthetic-train-samples = 4096
synthetic-test-samples = 512
hidden = 64
global-batch-size = 512
micro-batch-size = 8
epochs = 2
lr = 0.05
base-batch-size = 64
log-every = 5
seed = 4
INI
BASE=(--config "$WORK/base.ini")

# --- 1. Adaptive.
mpirun -np 2 "$DTRAIN" "${BASE[@]}" --batch-schedule adaptive --noise-scale true --eval-every 10 \
  --out-dir "$WORK/adaptive" >"$WORK/adaptive.log" 2>&1 || { cat "$WORK/adaptive.log"; fail "adaptive run failed"; }
"$PYTHON" - "$WORK/adaptive" <<'PY' || fail "the adaptive run's records"
import json, sys
out = sys.argv[1]
records = [json.loads(line) for line in open(out + "/metrics.jsonl")]
changes = [r for r in records if r["event"] == "batch_change"]
evals = {r["step"] for r in records if r["event"] == "eval"}
assert len(changes) >= 2, f"{len(changes)} changes"
batch, start = 16, 0  # 2 ranks x micro 8
per_step = {}
for c in changes:
    assert c["from_global_batch_size"] == batch and batch < c["global_batch_size"] <= 2 * batch, c
    assert c["global_batch_size"] % 16 == 0 and c["global_batch_size"] <= 512, c
    assert c["step"] in evals and c["reason"].startswith("adaptive: B_simple"), c
    assert c["grad_accum_steps"] * 16 == c["global_batch_size"], c
    assert abs(c["lr"] - 0.05 * c["global_batch_size"] / 64) < 1e-12, c  # linear scaling from base 64
    for s in range(start + 1, c["step"] + 1):
        per_step[s] = batch
    batch, start = c["global_batch_size"], c["step"]
summary = json.load(open(out + "/summary.json"))
for s in range(start + 1, summary["steps"] + 1):
    per_step[s] = batch
trains = [r for r in records if r["event"] == "train"]
for t in trains:
    assert t["global_batch_size"] == per_step[t["step"]], t
    assert t["samples_seen"] == sum(per_step[s] for s in range(1, t["step"] + 1)), t
    assert abs(t["lr"] - 0.05 * t["global_batch_size"] / 64) < 1e-12, t
assert summary["samples_seen"] == sum(per_step.values())
# Two epochs of 4096, less at most one short tail per epoch.
assert 2 * 4096 - 2 * 512 < summary["samples_seen"] <= 2 * 4096, summary["samples_seen"]
print(f"{len(changes)} changes: " + " -> ".join(str(c["from_global_batch_size"]) for c in changes) + f" -> {batch}")
PY
pass "adaptive: the batch grew at evaluations, at most doubling, and the records follow it"

# --- 2. Rampup 32 -> 128 by 32 over 3000 samples (changes after 1000, 2000 and 3000 samples).
RAMP=("${BASE[@]}" --global-batch-size 128 --micro-batch-size 16 --batch-schedule rampup:32:32:3000
      --schedule cosine --warmup-steps 4)
mpirun -np 1 "$DTRAIN" "${RAMP[@]}" --out-dir "$WORK/ramp" --export "$WORK/ramp.pt" >"$WORK/ramp.log" 2>&1 \
  || { cat "$WORK/ramp.log"; fail "rampup run failed"; }
"$PYTHON" - "$WORK/ramp" <<'PY' || fail "the rampup run's records"
import json, sys
records = [json.loads(line) for line in open(sys.argv[1] + "/metrics.jsonl")]
changes = [(c["samples_seen"], c["from_global_batch_size"], c["global_batch_size"]) for c in records
           if c["event"] == "batch_change"]
# 32 x 32 = 1024 >= 1000; then 64-sample steps to 2048 >= 2000; then 96 to 3008 >= 3000.
assert changes == [(1024, 32, 64), (2048, 64, 96), (3008, 96, 128)], changes
PY
pass "rampup: 32 -> 64 -> 96 -> 128 at 1024, 2048 and 3008 samples"
mpirun -np 1 "$DTRAIN" "${RAMP[@]}" --out-dir "$WORK/fixed" --batch-schedule-lr fixed --max-steps 5 \
  >"$WORK/fixed.log" 2>&1 || { cat "$WORK/fixed.log"; fail "rampup with --batch-schedule-lr fixed failed"; }
"$PYTHON" - "$WORK/ramp" "$WORK/fixed" <<'PY' || fail "the LR under a ramp"
import json, math, sys
def records(out):
    return [json.loads(line) for line in open(out + "/metrics.jsonl")]
scale, fixed = records(sys.argv[1]), records(sys.argv[2])
# Warmup: 4 steps of the final batch (512 samples) from the unscaled 0.05 to
# the peak. Step 5 starts at 128 samples (1 final-batch step in): scale peaks
# at batch 32's 0.025, fixed at batch 128's 0.1.
step5 = lambda rs: next(r["lr"] for r in rs if r["event"] == "train" and r["step"] == 5)
assert abs(step5(scale) - (0.05 + (0.025 - 0.05) / 4)) < 1e-12, step5(scale)
assert abs(step5(fixed) - (0.05 + (0.1 - 0.05) / 4)) < 1e-12, step5(fixed)
# Then cosine over 2 epochs of 32 final-batch steps: at the first change
# (1024 samples, 8 final-batch steps in), batch 64's peak 0.05 x the shape.
change = next(r for r in scale if r["event"] == "batch_change")
shape = 0.5 * (1 + math.cos(math.pi * (1024 / 128 - 4) / (2 * 32 - 4)))
assert abs(change["lr"] - 0.05 * shape) < 1e-12, (change["lr"], shape)
PY
pass "rampup: the LR reads warmup and cosine in samples, peaked for the current batch"

# Resume: a checkpoint at step 30 (960 samples, batch 32), continued across the changes.
mpirun -np 1 "$DTRAIN" "${RAMP[@]}" --out-dir "$WORK/stop" --checkpoint-every 30 --max-steps 30 \
  >"$WORK/stop.log" 2>&1 || { cat "$WORK/stop.log"; fail "rampup run to step 30 failed"; }
mpirun -np 1 "$DTRAIN" "${RAMP[@]}" --out-dir "$WORK/stop" --checkpoint-every 30 --resume auto --export "$WORK/stop.pt" \
  >"$WORK/resume.log" 2>&1 || { cat "$WORK/resume.log"; fail "rampup resume failed"; }
expect_resumed "$WORK/resume.log" "$WORK/stop/checkpoints" 30 "rampup, --max-steps 30, then --resume auto"
cmp -s "$WORK/ramp.pt" "$WORK/stop.pt" || fail "the resumed ramp's weights differ from the uninterrupted run's"
"$PYTHON" - "$WORK/ramp" "$WORK/stop" <<'PY' || fail "the resumed ramp's records"
import json, sys
def events(out):
    return [{k: v for k, v in r.items() if k not in ("elapsed_sec", "samples_per_sec", "write_seconds", "path", "bytes")}
            for r in map(json.loads, open(out + "/metrics.jsonl")) if r["event"] in ("train", "eval", "batch_change")]
a, b = events(sys.argv[1]), events(sys.argv[2])
assert a == b, next((x, y) for x, y in zip(a, b) if x != y)
PY
pass "rampup: resumed before a change, bitwise the uninterrupted run (weights and records)"

# --- 3. Refusals.
expect_error 2 "not a multiple of INCREMENT" -- "$MPIRUN_BIN" --oversubscribe --bind-to none -np 1 "$DTRAIN" \
  "${BASE[@]}" --batch-schedule rampup:32:50:1000 --out-dir "$WORK/bad"
expect_error 2 "add --noise-scale true" -- "$MPIRUN_BIN" --oversubscribe --bind-to none -np 1 "$DTRAIN" \
  "${BASE[@]}" --batch-schedule adaptive --out-dir "$WORK/bad"
expect_error 2 "give --micro-batch-size instead of auto" -- "$MPIRUN_BIN" --oversubscribe --bind-to none -np 1 \
  "$DTRAIN" "${BASE[@]}" --batch-schedule rampup:32:32:1000 --micro-batch-size auto --memory-budget 1GiB \
  --out-dir "$WORK/bad"
expect_error 2 "rampup:START:INCREMENT:SAMPLES" -- "$DTRAIN" "${BASE[@]}" --batch-schedule rampup:32 --out-dir "$WORK/bad"
