# End to end on 2 ranks: dtrain learns the synthetic task (labels from a
# random teacher network). Stated bounds: the last logged training loss is
# below 0.5 and below a third of the first; test accuracy is at least 0.4
# (chance is 0.1). The run also writes the documented files.
source "$(dirname "$0")/common.sh"
mpirun -np 2 "$DTRAIN" --dataset synthetic --micro-batch-size 32 --epochs 4 --hidden 256 \
  --log-every 32 --out-dir "$WORK/run" >"$WORK/out" 2>"$WORK/err" || { cat "$WORK/out" "$WORK/err"; fail "training failed"; }
grep -q "global batch 64 = micro 32 x accum 1 x world 2; lr 0.1 -> 0.025 (linear, base batch 256)" "$WORK/out" \
  || { cat "$WORK/out"; fail "no batch line"; }
grep -q "^step 32/512 | epoch 0.25 | loss" "$WORK/err" || { cat "$WORK/err"; fail "no progress line"; }
for file in config.json metrics.jsonl summary.json; do [ -s "$WORK/run/$file" ] || fail "missing $file"; done
"$PYTHON" - "$WORK/run" <<'PY' || fail "did not learn"
import json, sys
run = sys.argv[1]
events = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
train = [e for e in events if e["event"] == "train"]
evals = [e for e in events if e["event"] == "eval"]
summary = json.load(open(f"{run}/summary.json"))
for key in ("step", "epoch", "samples_seen", "lr", "train_loss", "grad_norm", "samples_per_sec"):
    assert key in train[0], key
for key in ("test_accuracy", "test_loss", "train_eval_accuracy", "train_eval_loss", "generalization_gap"):
    assert key in evals[-1], key
assert len(evals) == 4, len(evals)               # end of each epoch
assert evals[-1]["test_samples"] == 2048          # every test sample once, no padding
assert train[-1]["samples_seen"] == 512 * 64
first, last = train[0]["train_loss"], train[-1]["train_loss"]
assert last < 0.5 and last < first / 3, (first, last)
assert summary["test_accuracy"] >= 0.4, summary["test_accuracy"]
print(f"ok: loss {first:.3f} -> {last:.3f}, test accuracy {summary['test_accuracy']:.3f}")
PY
echo "train_synthetic: all passed"
