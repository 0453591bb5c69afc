# --precision (models/precision.h) end to end on the CPU, in both LibTorch
# builds: a small GPT (2 layers, width 64, block 32) trained 100 steps in
# bf16-mixed ends within 2% of fp32's training loss, holds fewer activation
# bytes at the same micro-batch, exports fp32 weights, records its precision,
# and, stopped at step 50 and resumed, exports bitwise the weights of the
# uninterrupted run; a resume that changes the precision is refused, and
# --precision auto is fp32 on a CPU. On LibTorch 2.x the bf16-mixed run takes
# the fused AdamW step, and fp32 the loop (summary.json "fused_adamw").
source "$(dirname "$0")/common.sh"
GPT=(--device cpu --dataset kjv --model gpt --n-layer 2 --n-head 2 --n-embd 64 --block-size 32 --pack true
     --global-batch-size 32 --micro-batch-size 16 --optimizer adamw --lr 0.003 --base-batch-size 32
     --weight-decay 0.1 --warmup-steps 10 --grad-clip-norm 1 --epochs 1
     --validation-size 200 --eval-every 0 --log-every 25 --seed 3)

start=$SECONDS
"$DTRAIN" "${GPT[@]}" --max-steps 100 --precision auto --out-dir "$WORK/fp32" --export "$WORK/fp32.pt" >"$WORK/fp32.log" 2>&1 ||
  { tail -20 "$WORK/fp32.log"; fail "fp32 (auto) training failed"; }
fp32_seconds=$((SECONDS - start))
grep -q "; precision fp32" "$WORK/fp32.log" || { head -3 "$WORK/fp32.log"; fail "--precision auto did not resolve to fp32 on a CPU"; }
start=$SECONDS
"$DTRAIN" "${GPT[@]}" --max-steps 100 --precision bf16-mixed --out-dir "$WORK/bf16" --export "$WORK/bf16.pt" >"$WORK/bf16.log" 2>&1 ||
  { tail -20 "$WORK/bf16.log"; fail "bf16-mixed training failed"; }
bf16_seconds=$((SECONDS - start))
pass "100 steps: fp32 (auto) in ${fp32_seconds} s, bf16-mixed in ${bf16_seconds} s"
# The time limit holds in the plain builds; under the sanitizers
# (ASAN_OPTIONS set by launch/test.sh) every kernel is several times slower.
[ -n "${ASAN_OPTIONS:-}" ] || [ "$bf16_seconds" -le 60 ] || fail "bf16-mixed took ${bf16_seconds} s (60 s allowed)"

"$PYTHON" - "$WORK" <<'PY' || fail "bf16-mixed against fp32"
import json, sys, torch
work = sys.argv[1]
def last_loss(run):
    train = [json.loads(l) for l in open(f"{work}/{run}/metrics.jsonl") if '"train"' in l]
    return train[-1]["train_loss"]
summaries = {run: json.load(open(f"{work}/{run}/summary.json")) for run in ("fp32", "bf16")}
configs = {run: json.load(open(f"{work}/{run}/config.json")) for run in ("fp32", "bf16")}
fp32, bf16 = last_loss("fp32"), last_loss("bf16")
print(f"training loss over steps 76-100: fp32 {fp32:.4f}, bf16-mixed {bf16:.4f} ({100 * (bf16 / fp32 - 1):+.2f}%)")
assert abs(bf16 - fp32) <= 0.02 * fp32, "bf16-mixed is not within 2% of fp32's training loss"
assert summaries["fp32"]["precision"] == "fp32" and summaries["bf16"]["precision"] == "bf16-mixed", summaries
assert configs["fp32"]["precision"] == "fp32" and configs["bf16"]["precision"] == "bf16-mixed", "config.json"
assert summaries["fp32"]["fused_adamw"] is False, "fp32 must keep the loop AdamW"
acts = {run: s["memory"]["activations_bytes"] for run, s in summaries.items()}
print(f"activation bytes per step: fp32 {acts['fp32']}, bf16-mixed {acts['bf16']} ({acts['fp32'] / acts['bf16']:.2f}x less)")
assert acts["bf16"] < acts["fp32"], "bf16-mixed does not hold fewer activation bytes"
weights = torch.load(f"{work}/bf16.pt", weights_only=True)
types = {str(t.dtype) for t in weights.values()}
print(f"bf16-mixed exported {len(weights)} tensors of {sorted(types)}; fused AdamW: {summaries['bf16']['fused_adamw']}")
assert types == {"torch.float32"}, types
PY
pass "bf16-mixed: training loss within 2% of fp32's, fewer activation bytes, fp32 weights exported"

# Stopped at step 50 (a checkpoint), then resumed: bitwise the uninterrupted run.
"$DTRAIN" "${GPT[@]}" --precision bf16-mixed --out-dir "$WORK/resumed" --max-steps 50 --checkpoint-every 50 \
  >"$WORK/first.log" 2>&1 || { tail -20 "$WORK/first.log"; fail "the first half failed"; }
expect_error nonzero "--precision" -- \
  "$DTRAIN" "${GPT[@]}" --max-steps 100 --precision fp32 --out-dir "$WORK/resumed" --resume auto
"$DTRAIN" "${GPT[@]}" --precision bf16-mixed --max-steps 100 --out-dir "$WORK/resumed" --resume auto --export "$WORK/resumed.pt" \
  >"$WORK/second.log" 2>&1 || { tail -20 "$WORK/second.log"; fail "the resumed half failed"; }
grep -q "resuming from .*step-0*50 " "$WORK/second.log" || { head -5 "$WORK/second.log"; fail "did not resume from step 50"; }
cmp -s "$WORK/bf16.pt" "$WORK/resumed.pt" || fail "bf16-mixed stopped at 50 and resumed differs from the uninterrupted run"
pass "bf16-mixed stopped at step 50 and resumed: bitwise the uninterrupted run; a change of precision is refused"
