# dtrain plan (docs/studies.md, "Planning the batch"), end to end:
#   1. under mpirun -np 2 with the shipped study's fit.json and
#      --measure-network: plan.json's rows hold the named fields, their
#      arithmetic is consistent (split, time = steps x step time, samples,
#      rank-seconds), the fit is the study's, the network was measured, and
#      the two recommendations are the best rows for their aims with the LR
#      by the config's scaling rule;
#   2. a deadline: the cheapest row within it;
#   3. a noise scale (a --measure-noise-scale summary): steps relative to
#      the measured batch;
#   4. the refusals, each a one-line error.
source "$(dirname "$0")/common.sh"
FIT="$(cd "$(dirname "$0")/../.." && pwd)/docs/studies/fit.json"

cat >"$WORK/base.ini" <<'INI'
dataset = synthetic
synthetic-train-samples = 2048
synthetic-test-samples = 256
hidden = 64
global-batch-size = 256
micro-batch-size = 8
lr = 0.05
base-batch-size = 64
INI
BASE=(--config "$WORK/base.ini" --max-micro 64)

# --- 1. The plan from the study's fit, the network measured at 2 ranks.
# (--noise-scale true, a training option, must not be taken for the plan's --noise-scale-json)
mpirun -np 2 "$DTRAIN" plan "${BASE[@]}" --fit "$FIT" --measure-network --max-ranks 64 --out "$WORK/plan" --noise-scale true \
  >"$WORK/plan.log" 2>&1 || { cat "$WORK/plan.log"; fail "dtrain plan failed"; }
grep -q '^fastest: global batch' "$WORK/plan.log" || { cat "$WORK/plan.log"; fail "no recommendation printed"; }
"$PYTHON" - "$WORK/plan/plan.json" "$FIT" <<'PY' || fail "plan.json"
import json, math, sys
plan, fit = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))["fits"]["sgd"]
rows = plan["rows"]
fields = ["global_batch_size", "ranks", "micro_batch_size", "grad_accum_steps", "steps_to_target", "step_seconds",
          "time_to_target_seconds", "samples_to_target", "rank_seconds_to_target"]
assert all(all(f in r for f in fields) for r in rows), "a row lacks a field"
assert {r["global_batch_size"] for r in rows} == {2**k for k in range(4, 15)}, sorted({r["global_batch_size"] for r in rows})
assert {r["ranks"] for r in rows} == {1, 2, 4, 8, 16, 32, 64}
close = lambda a, b: abs(a - b) <= 1e-9 * max(abs(a), abs(b))
for r in rows:
    b, w = r["global_batch_size"], r["ranks"]
    assert r["micro_batch_size"] * r["grad_accum_steps"] * w == b and r["micro_batch_size"] <= 64, r
    assert close(r["steps_to_target"], fit["s_min"] * (1 + fit["b_crit"] / b)), r
    lo, hi = r["steps_to_target_interval"]
    assert lo <= r["steps_to_target"] <= hi, r
    assert close(r["time_to_target_seconds"], r["steps_to_target"] * r["step_seconds"]), r
    assert close(r["samples_to_target"], r["steps_to_target"] * b), r
    assert close(r["rank_seconds_to_target"], r["time_to_target_seconds"] * w), r
    assert r["step_seconds"] > 0 and r["exposed_communication_seconds"] >= 0, r
    assert w > 1 or r["exposed_communication_seconds"] == 0, r
net = plan["network"]
assert net["intra_alpha_seconds"] >= 0 and net["intra_beta_seconds_per_byte"] > 0 and 0 <= net["overlap"] <= 1, net
assert "measured over 2 ranks" in net["describe"], net["describe"]
assert plan["world_size_measured"] == 2 and len(plan["compute"]["micro_steps"]) == 7  # micro 1..64
fastest, cheapest = plan["fastest"], plan["cheapest"]
assert fastest["time_to_target_seconds"] == min(r["time_to_target_seconds"] for r in rows)
assert cheapest["rank_seconds_to_target"] == min(r["rank_seconds_to_target"] for r in rows)
for rec in (fastest, cheapest):
    assert close(rec["peak_lr"], 0.05 * rec["global_batch_size"] / 64), rec  # linear from base 64
lo, hi = plan["steps_model"]["b_crit_interval"]
assert lo < fit["b_crit"] < hi, plan["steps_model"]
print(f"{len(rows)} rows; fastest {fastest['global_batch_size']} on {fastest['ranks']} ranks "
      f"({fastest['time_to_target_seconds']:.3g} s), cheapest {cheapest['global_batch_size']} on {cheapest['ranks']}")
PY
pass "plan from the study's fit, network measured at 2 ranks"

# --- 2. A deadline: the cheapest row that meets it.
DEADLINE=$("$PYTHON" -c "import json,sys; print(2 * json.load(open(sys.argv[1]))['fastest']['time_to_target_seconds'])" \
  "$WORK/plan/plan.json")
NETWORK=$("$PYTHON" -c "import json,sys; n = json.load(open(sys.argv[1]))['network']; \
print(f\"{n['intra_alpha_seconds']!r},{n['intra_beta_seconds_per_byte']!r}\")" "$WORK/plan/plan.json")
# (--overlap false is the training option; the plan's own is --comm-overlap)
"$DTRAIN" plan "${BASE[@]}" --fit "$FIT" --network "$NETWORK" --max-ranks 64 --deadline "$DEADLINE" \
  --overlap false --comm-overlap 0.5 --out "$WORK/deadline" >"$WORK/deadline.log" 2>&1 \
  || { cat "$WORK/deadline.log"; fail "plan --deadline failed"; }
"$PYTHON" - "$WORK/deadline/plan.json" "$DEADLINE" <<'PY' || fail "the cheapest within the deadline"
import json, sys
plan, deadline = json.load(open(sys.argv[1])), float(sys.argv[2])
within = [r for r in plan["rows"] if r["time_to_target_seconds"] <= deadline]
cheapest = plan["cheapest"]
assert cheapest["time_to_target_seconds"] <= deadline
assert cheapest["rank_seconds_to_target"] == min(r["rank_seconds_to_target"] for r in within)
assert cheapest["rank_seconds_to_target"] <= plan["fastest"]["rank_seconds_to_target"]
assert plan["network"]["overlap"] == 0.5 and "overlap 0.5" in plan["network"]["describe"], plan["network"]
PY
pass "--deadline $DEADLINE: the cheapest row within it"

# --- 3. From a noise scale: steps relative to the measured batch.
cat >"$WORK/noise.json" <<'JSON'
{"status": "measured", "global_batch_size": 256, "noise_scale": {"b_simple": 400.0, "ci95": [300.0, 550.0]}}
JSON
"$DTRAIN" plan "${BASE[@]}" --noise-scale-json "$WORK/noise.json" --max-ranks 1 --out "$WORK/noise" \
  >"$WORK/noise.log" 2>&1 || { cat "$WORK/noise.log"; fail "plan --noise-scale-json failed"; }
"$PYTHON" - "$WORK/noise/plan.json" <<'PY' || fail "relative steps"
import json, sys
plan = json.load(open(sys.argv[1]))
assert plan["steps_model"]["relative"] and plan["steps_model"]["source"] == "noise_scale"
steps = {r["global_batch_size"]: r["steps_to_target"] for r in plan["rows"]}
assert abs(steps[256] - 1) < 1e-12 and abs(steps[1024] - (1 + 400 / 1024) / (1 + 400 / 256)) < 1e-12, steps
PY
pass "relative steps from a measured noise scale"

# --- 4. --help, and the refusals.
"$DTRAIN" plan --help >"$WORK/help.txt" || fail "plan --help exited non-zero"
for flag in --fit --noise-scale-json --steps --network --measure-network --max-ranks --deadline --comm-overlap --out; do
  grep -q -- "^  $flag " "$WORK/help.txt" || fail "plan --help does not list $flag"
done
pass "plan --help lists its flags"
expect_error 2 "needs one source of steps-to-target" -- "$DTRAIN" plan "${BASE[@]}" --max-ranks 4 --network 1e-5,1e-9
expect_error 2 "needs --max-ranks" -- "$DTRAIN" plan "${BASE[@]}" --fit "$FIT"
expect_error 2 "needs the network" -- "$DTRAIN" plan "${BASE[@]}" --fit "$FIT" --max-ranks 4
expect_error 2 "run dtrain plan under mpirun" -- "$DTRAIN" plan "${BASE[@]}" --fit "$FIT" --max-ranks 4 --measure-network
echo '{"fits": ' >"$WORK/broken.json"
expect_error 2 "is not a study's fit.json" -- "$DTRAIN" plan "${BASE[@]}" --fit "$WORK/broken.json" --max-ranks 1
expect_error 2 "is not two non-negative numbers" -- "$DTRAIN" plan "${BASE[@]}" --fit "$FIT" --max-ranks 4 --network fast
expect_error 2 "--deadline needs absolute steps-to-target" -- "$DTRAIN" plan "${BASE[@]}" \
  --noise-scale-json "$WORK/noise.json" --max-ranks 1 --deadline 60
expect_error 2 "needs one source" -- "$MPIRUN_BIN" --oversubscribe --bind-to none -np 2 "$DTRAIN" plan "${BASE[@]}" \
  --max-ranks 4 --measure-network
expect_error 2 "drop --shard-optimizer-state" -- "$DTRAIN" plan "${BASE[@]}" --fit "$FIT" --max-ranks 1 \
  --shard-optimizer-state true
