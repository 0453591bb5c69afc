# --activation-checkpointing blocks (models/gpt.h) end to end, on the CPU in
# fp32: a 4-layer GPT trained 40 steps at 2 ranks x accumulation 2 exports
# bitwise the weights it exports without checkpointing, with the all-reduces
# started from the gradient accumulators' hooks during backward (--overlap
# true, a bucket per parameter or two), and its step's activation bytes
# (summary.json "memory") fall at least 2x. A tiny GPT, a few seconds in all.
# The refusal for models without blocks is in cli_errors.sh; the mechanism's
# unit tests are GptCheckpointing.* and CheckpointedForward.*.
source "$(dirname "$0")/common.sh"
GPT=(--dataset kjv --model gpt --n-layer 4 --n-head 2 --n-embd 32 --block-size 32
     --global-batch-size 32 --micro-batch-size 8 --grad-accum-steps 2
     --optimizer adamw --lr 0.003 --base-batch-size 32 --weight-decay 0.1 --grad-clip-norm 1
     --max-steps 40 --eval-every 0 --log-every 20 --seed 5 --overlap true --bucket-cap-mb 0.01)

for mode in none blocks; do
  mpirun -np 2 "$DTRAIN" "${GPT[@]}" --activation-checkpointing "$mode" --out-dir "$WORK/$mode" \
    --export "$WORK/$mode.pt" >"$WORK/$mode.log" 2>&1 || { tail -20 "$WORK/$mode.log"; fail "training with $mode failed"; }
  grep -q "overlapped buckets" "$WORK/$mode.log" || { head -3 "$WORK/$mode.log"; fail "$mode: buckets not overlapped"; }
done
pass "40 steps at 2 ranks x accumulation 2, with and without checkpointing, all-reduces started from backward hooks"

# Bitwise: the recompute runs the same CPU kernels on the same inputs in
# fp32, so every gradient, every all-reduce and every update is the same.
cmp -s "$WORK/none.pt" "$WORK/blocks.pt" || fail "the weights with --activation-checkpointing blocks differ from none"
pass "the exported weights are bitwise equal"

"$PYTHON" - "$WORK/none/summary.json" "$WORK/blocks/summary.json" <<'PY' || fail "activation memory"
import json, sys
none, blocks = (json.load(open(path))["memory"]["activations_bytes"] for path in sys.argv[1:3])
print(f"activation bytes per rank: none {none}, blocks {blocks} ({none / blocks:.2f}x less)")
assert none >= 2 * blocks, f"blocks keeps {blocks} bytes, not half of none's {none}"
PY
pass "checkpointing at least halves the activation bytes"
