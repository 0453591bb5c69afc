# End to end on 2 ranks with the default config: one epoch of Fashion-MNIST
# reaches at least 84% test accuracy (measured: 86.6%).
source "$(dirname "$0")/common.sh"
CONFIG=$(cd "$(dirname "$0")/../.." && pwd)/configs/fashion_mnist_mlp.ini
mpirun -np 2 "$DTRAIN" --config "$CONFIG" --epochs 1 --out-dir "$WORK/run" >"$WORK/out" 2>"$WORK/err" \
  || { cat "$WORK/out" "$WORK/err"; fail "training failed"; }
"$PYTHON" - "$WORK/run/summary.json" <<'PY' || { cat "$WORK/out"; fail "accuracy too low"; }
import json, sys
summary = json.load(open(sys.argv[1]))
accuracy = summary["test_accuracy"]
assert accuracy >= 0.84, accuracy
print(f"ok: one epoch of Fashion-MNIST: test accuracy {accuracy:.4f}")
PY
echo "train_fashion: all passed"
