# The headline command, `mpirun -np 8 dtrain --config configs/fashion_mnist_mlp.ini`
# (oversubscribed on 2 cores): the shipped config fixes the global batch, so
# 8 ranks split the same 256 samples per step as 2 ranks do and reach the
# same accuracy (the promise: a fixed global batch trains the same model on
# any number of ranks). Two epochs each, to keep CI short; the full job's
# figures at 1, 2, 4 and 8 ranks are in docs/batch-size.md.
source "$(dirname "$0")/common.sh"
CONFIG=$(cd "$(dirname "$0")/../.." && pwd)/configs/fashion_mnist_mlp.ini
for ranks in 2 8; do
  mpirun -np "$ranks" "$DTRAIN" --config "$CONFIG" --epochs 2 --log-every 200 --out-dir "$WORK/np$ranks" \
    >"$WORK/np$ranks.log" 2>&1 || { tail -20 "$WORK/np$ranks.log"; fail "the default job at $ranks ranks failed"; }
done
grep -q "global batch 256 = micro 32 x accum 1 x world 8; lr 0.1 -> 0.1 (linear, base batch 256)" "$WORK/np8.log" \
  || { grep "global batch" "$WORK/np8.log"; fail "8 ranks did not split the config's global batch of 256"; }
"$PYTHON" - "$WORK/np2/summary.json" "$WORK/np8/summary.json" <<'PY' || fail "8 ranks trained another model"
import json, sys
two, eight = (json.load(open(path)) for path in sys.argv[1:])
assert two["status"] == eight["status"] == "completed", (two["status"], eight["status"])
assert two["global_batch_size"] == eight["global_batch_size"] == 256
# The same samples per step, summed in another order: float rounding only.
gap = abs(two["test_accuracy"] - eight["test_accuracy"])
assert eight["test_accuracy"] >= 0.85 and gap <= 0.005, (two["test_accuracy"], eight["test_accuracy"])
print(f"ok: 2 epochs at 2 and 8 ranks: test accuracy {two['test_accuracy']:.4f} and {eight['test_accuracy']:.4f}")
PY
echo "headline: all passed"
