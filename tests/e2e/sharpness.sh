# Sharpness (--measure-sharpness, --sharpness-at-end; run/sharpness.h) end to
# end: the MLP on Fashion-MNIST after a few steps, measured by dtrain at 1
# and 2 ranks and by PyTorch (tests/run/sharpness_reference.py: double
# backward and power iteration from the same start vector, 50 iterations on
# both sides), within 1e-3; the same value at 1 and 2 ranks within 1e-5; the
# measurement at the end of a run lands in summary.json; bad requests get one
# line.
source "$(dirname "$0")/common.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
"$PYTHON" -c "import torch" 2>/dev/null || fail "$PYTHON has no torch: apt-get install python3-torch"
RUN=(--dataset fashion-mnist --hidden 64 --validation-size 0 --threads 1)
ERR=("${RUN[@]}" --micro-batch-size 64)

# Weights partway through training, where the Hessian is not trivial.
"$DTRAIN" "${RUN[@]}" --micro-batch-size 64 --max-steps 40 --lr 0.05 --export "$WORK/w.pt" \
  --out-dir "$WORK/train" >/dev/null
MEASURE=(--init-from "$WORK/w.pt" --measure-sharpness 512 --micro-batch-size 128 --sharpness-iterations 50
         --sharpness-tolerance 0)
"$DTRAIN" "${RUN[@]}" "${MEASURE[@]}" --out-dir "$WORK/one" >"$WORK/one.log"
grep -q "^sharpness: top Hessian eigenvalue .* over 512 training samples (stopped at the iteration limit after 50" \
  "$WORK/one.log" || { cat "$WORK/one.log"; fail "the sharpness line"; }
mpirun -np 2 "$DTRAIN" "${RUN[@]}" "${MEASURE[@]}" --out-dir "$WORK/two" >"$WORK/two.log"
[ ! -e "$WORK/one/metrics.jsonl" ] || fail "a measurement wrote metrics.jsonl"
reference=$("$PYTHON" "$ROOT/tests/run/sharpness_reference.py" "$WORK/w.pt" 64 512 50)
"$PYTHON" - "$WORK" "$reference" <<'PY' || fail "sharpness values"
import json, sys
work, reference = sys.argv[1], float(sys.argv[2])
one = json.load(open(f"{work}/one/sharpness.json"))
two = json.load(open(f"{work}/two/sharpness.json"))
assert one["status"] == "measured" and one["iterations"] == 50 and one["stopped"] == "max iterations", one
value = one["top_eigenvalue"]
assert value > 0.1, value  # a real curvature, not an untrained zero
assert abs(two["top_eigenvalue"] - value) <= 1e-5 * abs(value), (value, two["top_eigenvalue"])
assert abs(reference - value) <= 1e-3 * abs(reference), (value, reference)
print(f"ok: dtrain {value:.6f} at 1 rank, {two['top_eigenvalue']:.6f} at 2, PyTorch {reference:.6f} "
      f"(relative {abs(reference - value) / abs(reference):.1e})")
PY

# With the default tolerance it converges sooner, near the same value.
"$DTRAIN" "${RUN[@]}" --init-from "$WORK/w.pt" --measure-sharpness 512 --micro-batch-size 128 \
  --out-dir "$WORK/tol" >/dev/null
"$PYTHON" - "$WORK" <<'PY' || fail "the tolerance"
import json, sys
tol = json.load(open(f"{sys.argv[1]}/tol/sharpness.json"))
one = json.load(open(f"{sys.argv[1]}/one/sharpness.json"))
assert tol["stopped"] == "converged" and tol["iterations"] < 50 and tol["relative_change"] < 1e-3, tol
assert abs(tol["top_eigenvalue"] - one["top_eigenvalue"]) < 0.02 * one["top_eigenvalue"], (tol, one)
print(f"ok: converged after {tol['iterations']} iterations at {tol['top_eigenvalue']:.5f}")
PY

# At the end of a run: after the final evaluation, into summary.json.
"$DTRAIN" "${RUN[@]}" --micro-batch-size 64 --max-steps 10 --sharpness-at-end 256 --out-dir "$WORK/end" \
  >"$WORK/end.log"
grep -q "^sharpness: top Hessian eigenvalue" "$WORK/end.log" || fail "no sharpness line at the end"
"$PYTHON" -c "
import json, math, sys
s = json.load(open('$WORK/end/summary.json'))
assert s['status'] == 'completed' and math.isfinite(s['sharpness']['top_eigenvalue']), s.get('sharpness')
assert s['sharpness']['samples'] == 256
" || fail "summary.json's sharpness"
pass "--sharpness-at-end: summary.json holds the measurement"

expect_error 2 "--measure-sharpness measures given weights: add --init-from" -- \
  "$DTRAIN" "${ERR[@]}" --measure-sharpness 64 --out-dir "$WORK/e1"
expect_error 2 "--measure-sharpness 70000: the training split has 60000 samples" -- \
  "$DTRAIN" "${ERR[@]}" --init-from "$WORK/w.pt" --measure-sharpness 70000 --out-dir "$WORK/e2"
expect_error 2 "give one of them" -- \
  "$DTRAIN" "${ERR[@]}" --init-from "$WORK/w.pt" --measure-sharpness 64 --measure-noise-scale 4 --out-dir "$WORK/e3"
echo "sharpness: all passed"
