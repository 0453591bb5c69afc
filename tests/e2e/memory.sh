# Memory accounting, --micro-batch-size auto against brute force, and the
# out-of-memory re-split (memory/memory.h, memory/out_of_memory.h), on CPU.
source "$(dirname "$0")/common.sh"
BASE=(--dataset synthetic --synthetic-train-samples 2048 --synthetic-test-samples 256 --hidden 512,512
      --optimizer sgd --momentum 0.9 --lr 0.05 --epochs 1 --log-every 1 --seed 3)
field() {  # SUMMARY KEY.PATH
  "$PYTHON" -c "import json,sys; v=json.load(open(sys.argv[1])); [v:=v[int(k) if k.isdigit() else k] for k in sys.argv[2].split('.')]; print(v)" "$1" "$2"
}

# 1. The breakdown: parameters exactly as exported, gradients as many
# bytes, optimizer state one momentum buffer; activations linear in the
# micro-batch and none added by accumulation.
run_split() {  # NAME MICRO ACCUM
  "$DTRAIN" "${BASE[@]}" --micro-batch-size "$2" --grad-accum-steps "$3" --max-steps 3 --out-dir "$WORK/$1" \
    --export "$WORK/$1.pt" >"$WORK/$1.log" 2>&1 || { cat "$WORK/$1.log"; fail "$1 failed"; }
}
run_split m32 32 1
run_split m64 64 1
run_split m128 128 1
run_split m32x4 32 4
grep -q "^memory per rank (rank 0, first step, micro-batch 32): parameters" "$WORK/m32.log" \
  || { cat "$WORK/m32.log"; fail "no memory line at start-up"; }
"$PYTHON" - "$WORK" <<'PY' || fail "memory breakdown"
import json, sys, torch
work = sys.argv[1]
m = {name: json.load(open(f"{work}/{name}/summary.json"))["memory"] for name in ("m32", "m64", "m128", "m32x4")}
params = sum(t.numel() * t.element_size() for t in torch.load(f"{work}/m32.pt").values())
print("parameters", params, "breakdown", m["m32"])
assert m["m32"]["parameters_bytes"] == params, "parameters"
assert m["m32"]["gradients_bytes"] == params, "gradients (float buckets, no copies)"
assert m["m32"]["optimizer_state_bytes"] == params, "SGD momentum: one buffer per parameter"
a = {name: m[name]["activations_bytes"] for name in m}
print("activations", a)
# Linear: a fixed part (backward's per-parameter gradient before it is added
# into its bucket) plus a part per sample, so equal steps of the micro-batch
# add equal bytes per sample.
per_sample_low, per_sample_high = (a["m64"] - a["m32"]) / 32, (a["m128"] - a["m64"]) / 64
print(f"activations per sample: {per_sample_low:.0f} bytes (32 -> 64), {per_sample_high:.0f} bytes (64 -> 128)")
assert per_sample_low > 0 and abs(per_sample_high / per_sample_low - 1) < 0.05, "not linear in the micro-batch"
assert abs(a["m32x4"] / a["m32"] - 1) < 0.05, "accumulation added activation memory"
for name in m:
    assert m[name]["peak_bytes"] >= m[name]["parameters_bytes"] * 3 + m[name]["activations_bytes"]
PY
pass "breakdown: parameters, gradients and momentum as exported; activations linear in the micro-batch, none added by accumulation"

# 2. --micro-batch-size auto against brute force (2 ranks, global 256: each
# rank's share 128). Brute force: every divisor run explicitly, its measured
# peak read back; the budget lies midway between two candidates' peaks.
declare -A PEAK
for micro in 1 2 4 8 16 32 64 128; do
  mpirun -np 2 "$DTRAIN" "${BASE[@]}" --global-batch-size 256 --micro-batch-size "$micro" --max-steps 2 \
    --out-dir "$WORK/bf$micro" --export "$WORK/bf$micro.pt" >"$WORK/bf$micro.log" 2>&1 \
    || { cat "$WORK/bf$micro.log"; fail "brute force at $micro failed"; }
  PEAK[$micro]=$(field "$WORK/bf$micro/summary.json" memory.peak_bytes)
done
echo "peaks by micro-batch: $(for m in 1 2 4 8 16 32 64 128; do printf '%s:%s ' "$m" "${PEAK[$m]}"; done)"
for pair in "16 32" "64 128" "1 2"; do
  set -- $pair
  budget=$(( (PEAK[$1] + PEAK[$2]) / 2 ))
  # The truth by brute force: the largest divisor whose peak fits.
  truth=0
  for m in 1 2 4 8 16 32 64 128; do [ "${PEAK[$m]}" -le "$budget" ] && truth=$m; done
  mpirun -np 2 "$DTRAIN" "${BASE[@]}" --global-batch-size 256 --micro-batch-size auto --memory-budget "$budget" \
    --max-steps 2 --out-dir "$WORK/auto$1" --export "$WORK/auto$1.pt" >"$WORK/auto$1.log" 2>&1 \
    || { cat "$WORK/auto$1.log"; fail "auto with budget $budget failed"; }
  chose=$(field "$WORK/auto$1/summary.json" micro_batch_size)
  [ "$chose" = "$truth" ] || { cat "$WORK/auto$1.log"; fail "auto chose $chose under $budget bytes; brute force says $truth"; }
  grep -q "^micro-batch auto (budget .* per rank): tried .*; chose $truth: global batch 256 = micro $truth x accum $((128 / truth)) x world 2" \
    "$WORK/auto$1.log" || { cat "$WORK/auto$1.log"; fail "no line saying what auto tried"; }
  cmp -s "$WORK/auto$1.pt" "$WORK/bf$truth.pt" || fail "auto at $truth is not bitwise the explicit run at $truth"
  [ "$(field "$WORK/auto$1/summary.json" memory.budget_bytes)" = "$budget" ] || fail "budget not in summary"
  # Each probe predicted the peak the explicit run then measured.
  for m in 1 2 4 8 16 32 64 128; do echo "$m ${PEAK[$m]}"; done >"$WORK/peaks.txt"
  "$PYTHON" - "$WORK/auto$1/summary.json" "$WORK/peaks.txt" <<'PY' || fail "a probe's peak is not the explicit run's"
import json, sys
peaks = dict(tuple(map(int, line.split())) for line in open(sys.argv[2]))
for probe in json.load(open(sys.argv[1]))["micro_batch_auto"]["tried"]:
    if probe["peak_bytes"] is None:
        continue
    error = abs(probe["peak_bytes"] / peaks[probe["micro_batch_size"]] - 1)
    print(f"probe {probe['micro_batch_size']}: {probe['peak_bytes']} vs explicit {peaks[probe['micro_batch_size']]}")
    assert error < 0.001, error
PY
  pass "auto under $budget bytes: $truth, as brute force; bitwise the explicit --micro-batch-size $truth"
done
expect_error 1 "not even a micro-batch of 1 fits the memory budget" -- \
  "$DTRAIN" "${BASE[@]}" --global-batch-size 256 --micro-batch-size auto --memory-budget 1000 --out-dir "$WORK/none"
expect_error 2 "--micro-batch-size auto on CPU needs --memory-budget" -- \
  "$DTRAIN" "${BASE[@]}" --global-batch-size 256 --micro-batch-size auto --out-dir "$WORK/nobudget"

# 3. Out of memory on one rank (the test hook gives rank 1 a budget that
# step 4's micro-batch exceeds, with several buckets in flight on rank 0):
# every rank redoes the step at half the micro-batch, and the run ends
# within 1e-5 of one at the smaller split from the start.
SPLIT=("${BASE[@]}" --global-batch-size 128 --max-steps 12 --overlap true --bucket-cap-mb 0.25)
env DTRAIN_FAULT_OOM=4:1 "$MPIRUN_BIN" --oversubscribe --bind-to none -np 2 -x DTRAIN_FAULT_OOM "$DTRAIN" "${SPLIT[@]}" \
  --micro-batch-size 64 --out-dir "$WORK/oom" --export "$WORK/oom.pt" --checkpoint-every 6 >"$WORK/oom.log" 2>&1 \
  || { cat "$WORK/oom.log"; fail "the run with an out-of-memory step failed"; }
mpirun -np 2 "$DTRAIN" "${SPLIT[@]}" --micro-batch-size 32 --out-dir "$WORK/small" --export "$WORK/small.pt" \
  >/dev/null 2>&1 || fail "the reference run at micro 32 failed"
grep -q "^step 4: out of memory on at least one rank; redoing the step as global batch 128 = micro 32 x accum 2 x world 2" \
  "$WORK/oom.log" || { cat "$WORK/oom.log"; fail "no out-of-memory line"; }
grep -q '"event":"out_of_memory".*"step":4' "$WORK/oom/metrics.jsonl" || fail "no out_of_memory event in metrics.jsonl"
[ "$(field "$WORK/oom/summary.json" micro_batch_size)" = 32 ] || fail "summary: not micro 32 after the re-split"
[ "$(field "$WORK/oom/summary.json" out_of_memory.0.step)" = 4 ] || fail "summary: no out_of_memory record"
grep -q '"micro_batch_size": *32' "$WORK/oom/checkpoints/step-00000006/trainer.json" \
  || fail "the checkpoint after the re-split does not record micro 32"
# Resumed from the checkpoint after the re-split, the run keeps micro 32.
mpirun -np 2 "$DTRAIN" "${SPLIT[@]}" --micro-batch-size 64 --resume "$WORK/oom/checkpoints/step-00000006" \
  --out-dir "$WORK/oom-resumed" >"$WORK/resumed.log" 2>&1 \
  || { cat "$WORK/resumed.log"; fail "resume after the re-split failed"; }
grep -q "^keeping the checkpoint's split micro 32 x accum 2 (out of memory at step 4 at micro 64)" "$WORK/resumed.log" \
  || { cat "$WORK/resumed.log"; fail "the resumed run did not keep the narrowed split"; }
[ "$(field "$WORK/oom-resumed/summary.json" micro_batch_size)" = 32 ] || fail "the resumed run went back to micro 64"
[ "$(field "$WORK/oom-resumed/summary.json" memory.optimizer_state_bytes)" = \
  "$(field "$WORK/oom/summary.json" memory.optimizer_state_bytes)" ] || fail "the resumed run lost its optimizer state's bytes"
"$PYTHON" - "$WORK/small.pt" "$WORK/oom.pt" <<'PY' || fail "re-split run not within 1e-5 of micro 32 from the start"
import sys, torch
a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
worst = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)).item() for k in a)
print(f"max relative difference {worst:.2e}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
pass "out of memory on rank 1 at step 4: both ranks redid it at micro 32, within 1e-5 of micro 32 throughout"

# At micro-batch 1 nothing is left to halve: an error on every rank, no hang.
env DTRAIN_FAULT_OOM=3:0 "$MPIRUN_BIN" --oversubscribe --bind-to none -np 2 -x DTRAIN_FAULT_OOM "$DTRAIN" "${BASE[@]}" \
  --global-batch-size 2 --micro-batch-size 1 --max-steps 5 --out-dir "$WORK/one" >"$WORK/one.log" 2>&1 \
  && fail "out of memory at micro-batch 1 did not stop the run"
grep -q "^dtrain: error: rank 0: out of memory at step 3 with a micro-batch of 1: nothing is left to split" "$WORK/one.log" \
  || { cat "$WORK/one.log"; fail "no error line at micro-batch 1"; }
pass "out of memory at micro-batch 1 stops the run with one error line"
echo "memory: all passed"
