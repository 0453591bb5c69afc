# The batch-size study driver (docs/studies.md): its unit tests (the S(B)
# fit, best-LR choice, study files; the driver against a fake dtrain), then the
# shipped study's --quick variant with the real dtrain, whose outputs are
# checked for content: results.csv has a row per run with every column and a
# valid status, each run's steps_to_target is the first evaluation in its
# metrics.jsonl that meets the target, fit.json is finite, report.md shows
# every plot and every plot is a PNG, two seeds give medians and bootstrap
# intervals. A rerun must run nothing, say so, and end within a bound that
# only catches a hang. Then the quick variants of the fixed-budget study and
# of the Simple CNN study.
#   bash tests/study/study_quick.sh DTRAIN [MPIRUN]
source "$(dirname "$0")/../e2e/common.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STUDY=$ROOT/configs/studies/fashion_mnist_batch.ini

"$PYTHON" "$ROOT/tests/study/test_fit.py" 2>"$WORK/unit.log" || { cat "$WORK/unit.log"; fail "unit tests"; }
pass "unit tests of the fit, best-LR choice and study files"
"$PYTHON" "$ROOT/tests/study/test_driver.py" 2>"$WORK/driver.log" || { cat "$WORK/driver.log"; fail "driver test"; }
pass "driver against a fake dtrain: failed, diverged and interrupted runs, resume, skips"

study() {
  timeout 600 "$PYTHON" "$ROOT/study/study.py" "$STUDY" --quick --out "$WORK/study" \
    --dtrain "$DTRAIN" --mpirun "$MPIRUN_BIN" "$@"
}
started=$(date +%s)
study >"$WORK/first.log" 2>&1 || { cat "$WORK/first.log"; fail "the quick study failed"; }
seconds=$(( $(date +%s) - started ))
pass "quick study in $seconds s"

"$PYTHON" - "$ROOT" "$STUDY" "$WORK/study" <<'PY' || fail "the quick study's outputs"
import csv, json, math, re, sys
from pathlib import Path
root, study_file, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
sys.path.insert(0, str(root / "study"))
import aggregate, spec
study = spec.load(study_file, root, quick=True)
rows = list(csv.DictReader(open(out / "results.csv")))
assert list(rows[0]) == aggregate.COLUMNS, list(rows[0])
assert [row["run_id"] for row in rows] == [run.run_id for run in study.runs], [row["run_id"] for row in rows]
eval_key = {"train_accuracy": "train_eval_accuracy", "train_loss": "train_eval_loss"}.get(
    study.target.metric, study.target.metric)
reached = 0
for row, run in zip(rows, study.runs):
    assert row["status"] in ("completed", "diverged"), (row["run_id"], row["status"])
    assert int(row["global_batch_size"]) == run.global_batch_size and row["lr_rule"] == run.lr_rule
    directory = out / "runs" / run.run_id
    summary = json.load(open(directory / "summary.json"))
    assert summary["status"] == row["status"] and summary["global_batch_size"] == run.global_batch_size
    assert math.isclose(summary["peak_lr"], run.peak_lr, rel_tol=1e-9), (summary["peak_lr"], run.peak_lr)
    events = [json.loads(line) for line in open(directory / "metrics.jsonl")]
    meets = [e for e in events if e["event"] == "eval" and e.get(eval_key) is not None
             and (e[eval_key] <= study.target.value if study.target.lower_is_better else e[eval_key] >= study.target.value)]
    first = meets[0]["step"] if meets else None
    assert (int(row["steps_to_target"]) if row["steps_to_target"] else None) == first, (run.run_id, row, first)
    assert row["reached_target"] == str(first is not None)
    if first is not None:
        reached += 1
        assert int(row["samples_to_target"]) == meets[0]["samples_seen"]
        if run.batch_schedule == "constant":
            assert meets[0]["samples_seen"] == first * run.global_batch_size
        else:  # a ramp to the global batch: fewer samples, and the changes on record
            assert meets[0]["samples_seen"] < first * run.global_batch_size
            assert any(e["event"] == "batch_change" for e in events), run.run_id
        assert int(row["steps"]) == first, "--stop-at-target ends the run at the target"
    if row["status"] == "completed":
        assert 0 <= float(row["val_accuracy"]) <= 1 and 0 <= float(row["test_accuracy"]) <= 1
        noise = [e["noise_scale"] for e in events if e["event"] == "train" and e.get("noise_scale") is not None
                 and (first is None or e["step"] <= first)]
        assert noise and math.isclose(float(row["b_simple"]), sum(noise) / len(noise), rel_tol=1e-9)
best = [row for row in rows if row["best_lr"] == "True" and row["batch_schedule"] == "constant"]
assert {int(row["global_batch_size"]) for row in best} == {run.global_batch_size for run in study.runs}
# One LR per batch is best, all its seeds with it.
for batch in {run.global_batch_size for run in study.runs}:
    chosen = [row for row in best if int(row["global_batch_size"]) == batch]
    assert len({row["lr"] for row in chosen}) == 1 and len(chosen) == len({r.seed for r in study.runs}), chosen
assert reached >= 3, f"only {reached} runs reached the target"

fit = json.load(open(out / "fit.json"))["fits"]["sgd"]
assert fit["status"] == "fitted", fit
for key in ("s_min", "b_crit", "e_min", "r2", "mean_b_simple"):
    assert isinstance(fit[key], float) and math.isfinite(fit[key]), (key, fit[key])
assert fit["s_min"] > 0 and fit["b_crit"] > 0 and fit["r2"] <= 1
assert math.isclose(fit["e_min"], fit["s_min"] * fit["b_crit"], rel_tol=1e-9)
assert len(fit["points"]) >= 2
# Two seeds: the median with its min-max per batch, and bootstrap intervals.
seeds = sorted({run.seed for run in study.runs})
assert len(seeds) >= 2 and fit["seeds"] == len(seeds), fit["seeds"]
for point in fit["points"]:
    assert point["steps_min"] <= point["steps_to_target"] <= (point["steps_max"] or math.inf), point
    assert len(point["seed_steps"]) == len(seeds), point
for key in ("s_min", "b_crit"):
    low, high = fit[f"{key}_interval"]
    assert low <= fit[key] <= (math.inf if high is None else high), (key, fit[key], low, high)
assert fit["resamples"] == 1000 and fit["resamples_fitted"] > 900, fit["resamples_fitted"]
runs = json.load(open(out / "fit.json"))["runs"]
assert runs["total"] == len(rows) and runs["finished"] == len(rows), runs

report = (out / "report.md").read_text()
linked = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", report)
pngs = sorted(p.relative_to(out).as_posix() for p in (out / "plots").glob("*.png"))
assert sorted(linked) == pngs and len(pngs) == 5, (linked, pngs)
import matplotlib.image
for png in pngs:
    data = (out / png).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), png
    assert matplotlib.image.imread(out / png).shape[0] > 100, png
assert f"{fit['b_crit']:.4g}" in report
assert "### What the seeds' spread does to the conclusions" in report and "95% interval" in report
# The quick variant's arms to 2048: both compared in fit.json and the report.
[arms] = json.load(open(out / "fit.json"))["batch_schedules"]
assert arms["global_batch_size"] == 2048, arms
assert {arm["batch_schedule"] for arm in arms["arms"]} == {run.batch_schedule for run in study.runs
                                                           if run.global_batch_size == 2048}, arms
assert "## Batch-size schedules to global batch 2048" in report
print(f"ok: {len(rows)} runs, {reached} reached {study.target}; B_crit {fit['b_crit']:.4g}, "
      f"S_min {fit['s_min']:.4g}, R² {fit['r2']:.3f}, mean B_simple {fit['mean_b_simple']:.4g}")
PY

# A rerun runs nothing: every run is finished and says so.
touch "$WORK/before-rerun"
started=$(date +%s)
study >"$WORK/second.log" 2>&1 || { cat "$WORK/second.log"; fail "the rerun failed"; }
seconds=$(( $(date +%s) - started ))
runs=$(( $(wc -l <"$WORK/study/results.csv") - 1 ))
[ "$(grep -c '\] skip b' "$WORK/second.log")" -eq "$runs" ] || { cat "$WORK/second.log"; fail "the rerun did not skip all $runs runs"; }
grep -q "ran 0 run(s); skipped $runs" "$WORK/second.log" || { cat "$WORK/second.log"; fail "the rerun ran something"; }
[ -z "$(find "$WORK/study/runs" -newer "$WORK/before-rerun" -name 'summary.json')" ] || fail "the rerun rewrote a summary"
# That it ran nothing is checked above, on its log and the summaries; this
# bound only catches a rerun that hangs, with a margin for a loaded machine.
[ "$seconds" -le 120 ] || fail "the rerun took $seconds s"
pass "rerun skipped all $runs finished runs in $seconds s"

# The fixed-budget study's quick variant: every run trains its whole budget,
# each batch's LR is the best on final validation accuracy, and each run
# ends with its sharpness in summary.json.
FIXED=$ROOT/configs/studies/fashion_mnist_fixed_budget.ini
timeout 600 "$PYTHON" "$ROOT/study/study.py" "$FIXED" --quick --out "$WORK/fixed" --dtrain "$DTRAIN" \
  --mpirun "$MPIRUN_BIN" >"$WORK/fixed.log" 2>&1 || { cat "$WORK/fixed.log"; fail "the fixed-budget quick study"; }
"$PYTHON" - "$ROOT" "$FIXED" "$WORK/fixed" <<'PY' || { cat "$WORK/fixed.log"; fail "the fixed-budget study's outputs"; }
import csv, json, math, sys
from pathlib import Path
root, study_file, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
sys.path.insert(0, str(root / "study"))
import spec
study = spec.load(study_file, root, quick=True)
assert study.fixed_budget
rows = list(csv.DictReader(open(out / "results.csv")))
assert len(rows) == len(study.runs)
for row, run in zip(rows, study.runs):
    summary = json.load(open(out / "runs" / run.run_id / "summary.json"))
    assert summary["status"] == "completed" and not summary.get("stopped_at_target"), run.run_id
    assert summary["steps"] == summary["schedule_steps"], (run.run_id, summary["steps"], summary["schedule_steps"])
    sharpness = summary["sharpness"]
    assert math.isfinite(sharpness["top_eigenvalue"]) and sharpness["samples"] == 256, sharpness
    assert math.isclose(float(row["sharpness"]), sharpness["top_eigenvalue"])
result = json.load(open(out / "fixed_budget.json"))
assert result["mode"] == "fixed-budget"
points = result["optimizers"]["sgd"]["points"]
assert [p["global_batch_size"] for p in points] == sorted({r.global_batch_size for r in study.runs})
for point in points:
    cells = {}
    for row in rows:
        if int(row["global_batch_size"]) == point["global_batch_size"]:
            cells.setdefault(float(row["peak_lr"]), []).append(float(row["val_accuracy"]))
    best = max(cells, key=lambda lr: sum(cells[lr]) / len(cells[lr]))
    assert math.isclose(point["best_peak_lr"], best), (point, cells)
    low, high = point["sharpness_range"]
    assert low <= point["sharpness"] <= high and len(point["seeds"]) == 2, point
report = (out / "report.md").read_text()
assert "generalize" in report and "![fixed_budget.png](plots/fixed_budget.png)" in report
assert (out / "plots/fixed_budget.png").read_bytes().startswith(b"\x89PNG")
print("ok: fixed budget:", result["optimizers"]["sgd"].get("largest_vs_best_smaller"))
PY
pass "fixed-budget quick study: whole budgets, LR on final validation, sharpness at the end"

# The Simple CNN study's quick variant: at most 50,000 training samples in
# all, only the target's split evaluated until a run stops, a fit of its two
# batches.
CNN=$ROOT/configs/studies/fashion_mnist_cnn.ini
timeout 600 "$PYTHON" "$ROOT/study/study.py" "$CNN" --quick --out "$WORK/cnn" --dtrain "$DTRAIN" \
  --mpirun "$MPIRUN_BIN" >"$WORK/cnn.log" 2>&1 || { cat "$WORK/cnn.log"; fail "the Simple CNN quick study"; }
"$PYTHON" - "$ROOT" "$CNN" "$WORK/cnn" <<'PY' || { cat "$WORK/cnn.log"; fail "the Simple CNN study's outputs"; }
import json, sys
from pathlib import Path
root, study_file, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
sys.path.insert(0, str(root / "study"))
import spec
study = spec.load(study_file, root, quick=True)
samples = 0
for run in study.runs:
    directory = out / "runs" / run.run_id
    assert json.load(open(directory / "config.json"))["model"] == "simple-cnn"
    summary = json.load(open(directory / "summary.json"))
    assert summary["status"] == "completed" and summary["test_accuracy"] is not None, summary
    samples += summary["samples_seen"]
    evals = [json.loads(line) for line in open(directory / "metrics.jsonl") if '"eval"' in line]
    evals = [e for e in evals if e["event"] == "eval"]
    assert all(e["splits"] == "target" for e in evals[:-1]) and evals[-1]["splits"] == "all", run.run_id
assert samples <= 50000, samples
fit = json.load(open(out / "fit.json"))["fits"]["sgd"]
assert fit["status"] == "fitted" and len(fit["points"]) == 2, fit
print(f"ok: {len(study.runs)} Simple CNN runs, {samples} training samples, S_min {fit['s_min']:.3g}")
PY
pass "Simple CNN quick study: under 50,000 samples, target-split evaluations, a fit"
echo "study_quick: all passed"
