# The trainer's side of batch-size studies (docs/studies.md), end to end:
#   1. batch options on the command line override the file's as a group (the
#      README's example);
#   2. a validation split, a target reached on a geometric evaluation
#      schedule, and --stop-at-target;
#   3. the gradient noise scale online, its refusal where it cannot be
#      measured, and --measure-noise-scale at fixed weights;
#   4. an exact resume carries the noise-scale averages and the target; a
#      measurement of a run's checkpoint leaves its records alone; a run that
#      met its target with --stop-at-target stays stopped when resumed.
source "$(dirname "$0")/common.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

# --- 1. The README's example: --global-batch-size 1024 with the default config.
mpirun -np 2 "$DTRAIN" --config "$ROOT/configs/fashion_mnist_mlp.ini" --global-batch-size 1024 --max-steps 1 \
  --out-dir "$WORK/readme" >"$WORK/readme.log" 2>&1 || { cat "$WORK/readme.log"; fail "README example failed"; }
grep -q "global batch 1024 = micro 512 x accum 1 x world 2" "$WORK/readme.log" \
  || { grep "global batch" "$WORK/readme.log"; fail "the flag's global batch did not replace the file's"; }
pass "--global-batch-size 1024 over the default config: micro 512 x accum 1 x world 2"
expect_error 2 "global batch 1000 != micro 128 x accum 4 x world 2" -- \
  "$MPIRUN_BIN" --oversubscribe --bind-to none -np 2 "$DTRAIN" --config "$ROOT/configs/fashion_mnist_mlp.ini" \
  --global-batch-size 1000 --micro-batch-size 128 --grad-accum-steps 4 --out-dir "$WORK/bad"

cat >"$WORK/base.ini" <<'INI'
dataset = synthetic
synthetic-train-samples = 4096
synthetic-test-samples = 512
hidden = 64
global-batch-size = 64
micro-batch-size = 16
epochs = 3
lr = 0.5
log-every = 5
seed = 4
validation-size = 512
INI
BASE=(--config "$WORK/base.ini")

# --- 2. Validation, target, geometric schedule, stop at the target.
mpirun -np 2 "$DTRAIN" "${BASE[@]}" --eval-schedule geometric:4 --target val_accuracy:0.3 --stop-at-target true \
  --out-dir "$WORK/target" >"$WORK/target.log" 2>&1 || { cat "$WORK/target.log"; fail "target run failed"; }
grep -q "56 steps/epoch" "$WORK/target.log" || fail "the validation samples were not taken out of training (4096-512)/64 = 56"
"$PYTHON" - "$WORK/target" <<'PY' || fail "steps-to-target does not match the evaluations"
import json, math, sys
out = sys.argv[1]
records = [json.loads(line) for line in open(out + "/metrics.jsonl")]
evals = [r for r in records if r["event"] == "eval"]
summary = json.load(open(out + "/summary.json"))
assert all(e["val_samples"] == 512 and e["test_samples"] == 512 for e in evals), "validation or test size"
# Geometric:4 evaluates at ceil(2^(j/4)) (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 23, 27, 32, ...),
# and at epoch ends (56 steps).
steps = [e["step"] for e in evals]
grid = sorted({math.ceil(2 ** (j / 4) - 1e-9) for j in range(60)} | {56 * k for k in range(1, 4)})
assert steps == [s for s in grid if s <= steps[-1]], steps
first = next(e for e in evals if e["val_accuracy"] >= 0.3)
assert summary["steps_to_target"] == first["step"], (summary["steps_to_target"], first["step"])
assert summary["samples_to_target"] == first["step"] * 64
assert summary["stopped_at_target"] is True and summary["steps"] == first["step"], "did not stop at the target"
assert summary["status"] == "completed" and summary["val_accuracy"] == first["val_accuracy"]
assert any(e["val_accuracy"] < 0.3 for e in evals), "the target was met at once: the check proves nothing"
print(f"target val_accuracy 0.3 at step {first['step']} of {len(evals)} evaluations")
PY
pass "validation 512 held out; the first of the geometric evaluations to reach val_accuracy 0.3 is steps_to_target; the run stopped there"

# --eval-splits target: the evaluations before the last read only the
# target's split; the one that stops the run reads all; nothing else changes.
mpirun -np 2 "$DTRAIN" "${BASE[@]}" --eval-schedule geometric:4 --target val_accuracy:0.3 --stop-at-target true \
  --eval-splits target --out-dir "$WORK/target-only" >"$WORK/target-only.log" 2>&1 \
  || { cat "$WORK/target-only.log"; fail "--eval-splits target run failed"; }
"$DTRAIN" "${BASE[@]}" --eval-schedule geometric:4 --target val_accuracy:0.99 --eval-splits target --max-steps 12 \
  --out-dir "$WORK/target-end" >"$WORK/target-end.log" 2>&1 || { cat "$WORK/target-end.log"; fail "budget run failed"; }
"$PYTHON" - "$WORK/target" "$WORK/target-only" "$WORK/target-end" <<'PY' || fail "--eval-splits target"
import json, sys
def events(out):
    return [json.loads(line) for line in open(out + "/metrics.jsonl")]
full, only, end = (events(out) for out in sys.argv[1:])
evals = [e for e in only if e["event"] == "eval"]
assert [e["step"] for e in evals] == [e["step"] for e in full if e["event"] == "eval"]
for e in evals[:-1]:
    assert e["splits"] == "target" and "val_accuracy" in e and "test_accuracy" not in e and "train_eval_loss" not in e, e
assert evals[-1]["splits"] == "all" and "test_accuracy" in evals[-1] and "generalization_gap" in evals[-1], evals[-1]
# The same training: every train record and every validation number.
strip = lambda e: {k: v for k, v in e.items() if k not in ("elapsed_sec", "samples_per_sec")}
assert [strip(e) for e in only if e["event"] == "train"] == [strip(e) for e in full if e["event"] == "train"]
assert [e["val_accuracy"] for e in evals] == [e["val_accuracy"] for e in full if e["event"] == "eval"]
a, b = (json.load(open(out + "/summary.json")) for out in sys.argv[1:3])
for key in ("steps_to_target", "test_accuracy", "train_eval_accuracy", "generalization_gap", "val_accuracy"):
    assert a[key] == b[key], (key, a[key], b[key])
# A run that ends by its budget reads every split at its last step.
last = [e for e in end if e["event"] == "eval"][-1]
assert last["step"] == 12 and last["splits"] == "all", last
assert json.load(open(sys.argv[3] + "/summary.json"))["test_accuracy"] is not None
print(f"{len(evals)} evaluations, {len(evals) - 1} of them on the validation split only")
PY
pass "--eval-splits target: only the target's split until the evaluation that stops the run or ends it; the same run otherwise"
expect_error 2 "--target val_accuracy needs a validation split" -- "$DTRAIN" --dataset synthetic --target val_accuracy:0.9 \
  --out-dir "$WORK/bad"
expect_error 2 "--stop-at-target needs --target" -- "$DTRAIN" "${BASE[@]}" --stop-at-target true --out-dir "$WORK/bad"
expect_error 2 "--validation-size 4096 leaves nothing to train on" -- "$DTRAIN" "${BASE[@]}" --validation-size 4096 \
  --out-dir "$WORK/bad"

# --- 3. The noise scale: online, refused with one micro-batch, at fixed weights.
mpirun -np 2 "$DTRAIN" "${BASE[@]}" --noise-scale true --out-dir "$WORK/noise" --export "$WORK/noise.pt" \
  >"$WORK/noise.log" 2>&1 || { cat "$WORK/noise.log"; fail "noise-scale run failed"; }
"$PYTHON" - "$WORK/noise" <<'PY' || fail "noise scale not logged"
import json, sys
out = sys.argv[1]
train = [json.loads(l) for l in open(out + "/metrics.jsonl") if '"event":"train"' in l]
values = [r["noise_scale"] for r in train if r.get("noise_scale") is not None]
assert len(values) >= len(train) - 2 and all(v > 0 for v in values), values
summary = json.load(open(out + "/summary.json"))
assert summary["noise_scale"] == values[-1] and summary["noise_scale_ms_per_step"] > 0
print(f"B_simple from {values[0]:.1f} to {values[-1]:.1f} over {len(values)} log lines")
PY
grep -q "| B_simple [0-9]" "$WORK/noise.log" || fail "no B_simple on the progress line"
pass "--noise-scale: B_simple on every log line and in summary.json"
expect_error 2 "has one micro-batch per step; use 2+ ranks or --grad-accum-steps 2+" -- \
  "$DTRAIN" "${BASE[@]}" --micro-batch-size 64 --noise-scale true --out-dir "$WORK/bad"
expect_error 2 "--measure-noise-scale measures given weights" -- "$DTRAIN" "${BASE[@]}" --measure-noise-scale 5 \
  --out-dir "$WORK/bad"
mpirun -np 2 "$DTRAIN" "${BASE[@]}" --init-from "$WORK/noise.pt" --measure-noise-scale 30 --out-dir "$WORK/measure" \
  >"$WORK/measure.log" 2>&1 || { cat "$WORK/measure.log"; fail "--measure-noise-scale failed"; }
grep -E -q "^B_simple = [0-9.]+ \(95% interval [-0-9.]+ to [0-9.]+\) from 30 batches" "$WORK/measure.log" \
  || { cat "$WORK/measure.log"; fail "no measurement line"; }
"$PYTHON" - "$WORK/measure/noise_scale.json" <<'PY' || fail "measurement record"
import json, sys
s = json.load(open(sys.argv[1]))
n = s["noise_scale"]
assert s["status"] == "measured" and n["batches"] == 30 and n["ci95"][0] < n["b_simple"] < n["ci95"][1], s
PY
pass "--measure-noise-scale 30 at exported weights: $(grep '^B_simple' "$WORK/measure.log")"

# --- 4. Exact resume of the noise-scale averages and the target.
RESUME=("${BASE[@]}" --noise-scale true --target val_accuracy:0.3 --eval-schedule geometric:4)
mpirun -np 2 "$DTRAIN" "${RESUME[@]}" --out-dir "$WORK/ref" >/dev/null 2>&1 || fail "reference run failed"
mpirun -np 2 "$DTRAIN" "${RESUME[@]}" --out-dir "$WORK/cut" --checkpoint-every 50 --max-steps 100 >/dev/null 2>&1 \
  || fail "first half failed"
mpirun -np 2 "$DTRAIN" "${RESUME[@]}" --out-dir "$WORK/cut" --checkpoint-every 50 --resume auto >"$WORK/cut.log" 2>&1 \
  || { cat "$WORK/cut.log"; fail "resumed half failed"; }
expect_resumed "$WORK/cut.log" "$WORK/cut/checkpoints" 100 "the cut at step 100"
"$PYTHON" - "$WORK/ref" "$WORK/cut" <<'PY' || fail "the resumed run differs"
import json, sys
def records(out):
    rows = []
    for line in open(out + "/metrics.jsonl"):
        r = json.loads(line)
        if r["event"] in ("train", "eval", "target"):
            for timing in ("samples_per_sec", "elapsed_sec"):
                r.pop(timing, None)
            rows.append(r)
    return rows
a, b = records(sys.argv[1]), records(sys.argv[2])
assert a == b, next((x, y) for x, y in zip(a, b) if x != y) if len(a) == len(b) else (len(a), len(b))
sa, sb = (json.load(open(o + "/summary.json")) for o in sys.argv[1:3])
for key in ("noise_scale", "steps_to_target", "samples_to_target", "val_accuracy"):
    assert sa[key] == sb[key], key
assert sa["steps_to_target"] is not None and sa["steps_to_target"] < 100, "target reached before the cut"
print(f"{len(a)} identical records; B_simple {sa['noise_scale']:.2f}, steps_to_target {sa['steps_to_target']}")
PY
pass "a run cut at step 100 and resumed logs the same noise scale, evaluations and target as an uninterrupted one"

# A measurement in a finished run's folder, from its newest checkpoint, leaves
# that run's records alone and writes noise_scale.json.
before=$(md5sum "$WORK/cut/metrics.jsonl" "$WORK/cut/summary.json" "$WORK/cut/config.json")
mpirun -np 2 "$DTRAIN" "${RESUME[@]}" --out-dir "$WORK/cut" --resume auto --measure-noise-scale 10 \
  >"$WORK/measure2.log" 2>&1 || { cat "$WORK/measure2.log"; fail "measuring a checkpoint failed"; }
# The newest checkpoint of 168 steps, one every 50.
expect_resumed "$WORK/measure2.log" "$WORK/cut/checkpoints" 150 "--measure-noise-scale --resume auto"
[ "$before" = "$(md5sum "$WORK/cut/metrics.jsonl" "$WORK/cut/summary.json" "$WORK/cut/config.json")" ] \
  || fail "measuring a checkpoint changed its run's records"
grep -q '"status": "measured"' "$WORK/cut/noise_scale.json" || fail "no noise_scale.json"
expect_error 2 "--measure-noise-scale found no checkpoint" -- "$DTRAIN" "${BASE[@]}" --resume auto \
  --measure-noise-scale 5 --out-dir "$WORK/empty"
pass "--measure-noise-scale --resume auto measures the newest checkpoint and leaves the run's records alone"

# --stop-at-target with a checkpoint at the target step: a resume from it is done at once.
STOP=("${BASE[@]}" --target val_accuracy:0.3 --stop-at-target true --eval-schedule geometric:4 --checkpoint-every 1)
mpirun -np 2 "$DTRAIN" "${STOP[@]}" --out-dir "$WORK/stop" >/dev/null 2>&1 || fail "stop-at-target run failed"
cp "$WORK/stop/metrics.jsonl" "$WORK/stop-metrics.jsonl"
mpirun -np 2 "$DTRAIN" "${STOP[@]}" --out-dir "$WORK/stop" --resume auto >"$WORK/stop.log" 2>&1 \
  || { cat "$WORK/stop.log"; fail "resuming a run that met its target failed"; }
expect_resumed "$WORK/stop.log" "$WORK/stop/checkpoints" 32 "the target step's checkpoint"
grep -q '"steps": 32,' "$WORK/stop/summary.json" || fail "the resumed run went past the target step"
grep -q '"stopped_at_target": true' "$WORK/stop/summary.json" || fail "the resumed run forgot it met the target"
# (The checkpoint's own record comes after the bytes it keeps, as in any resume.)
diff <(grep -v '"event":"checkpoint"' "$WORK/stop-metrics.jsonl") <(grep -v '"event":"checkpoint"' "$WORK/stop/metrics.jsonl") \
  >/dev/null || fail "the resumed run logged more"
pass "a run resumed from its target step's checkpoint stops there, logging nothing more"
