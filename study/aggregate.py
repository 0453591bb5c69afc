"""From run folders to results: one row per run (results.csv), the best LR of
each global batch chosen on validation, and the fit of McCandlish et al.'s
S(B) = S_min (1 + B_crit / B) to the best steps-to-target (fit.json).

Seeds: each (batch, LR) cell takes the median over its seeds of the steps to
target, a seed that missed the target (or diverged) counting as the budget,
and keeps their min and max. The best LR of a batch is chosen on that median.
The intervals of S_min, B_crit and each batch's best LR come from a bootstrap
over seeds: resample each batch's seeds, re-choose its best LR, refit.
"""

import csv
import json
import math
from collections import defaultdict

import numpy as np

from executors import read_json, run_dir, slurm_status

COLUMNS = [
    "run_id", "optimizer", "seed", "global_batch_size", "batch_schedule", "micro_batch_size", "grad_accum_steps",
    "lr_rule", "lr_multiplier", "lr", "peak_lr", "status", "exit_code", "steps", "samples_seen",
    "reached_target", "steps_to_target", "samples_to_target",
    "val_accuracy", "val_loss", "test_accuracy", "test_loss", "train_accuracy", "train_loss",
    "generalization_gap", "sharpness", "b_simple", "b_simple_at_target", "wall_seconds", "budget_steps", "best_lr",
]
# Resamples of the bootstrap over seeds, and the share of them outside each
# end of an interval.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_TAIL = 0.025
# A --target metric's name in eval records and in summary.json.
EVAL_KEYS = {"val_accuracy": "val_accuracy", "val_loss": "val_loss", "test_accuracy": "test_accuracy",
             "test_loss": "test_loss", "train_accuracy": "train_eval_accuracy", "train_loss": "train_eval_loss"}


def read_events(directory):
    """metrics.jsonl as a list of dicts (a torn last line is dropped)."""
    events = []
    try:
        with open(directory / "metrics.jsonl") as file:
            for line in file:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return events


def first_eval_meeting(events, target):
    """The first eval event at which the target metric meets the target, else None."""
    key = EVAL_KEYS[target.metric]
    for event in events:
        if event.get("event") == "eval" and target.met(event.get(key)):
            return event
    return None


def mean_noise_scale(events, until_step=None):
    """B_simple: the mean of the logged noise_scale over the run, up to
    until_step when given (None when none was logged)."""
    values = [event["noise_scale"] for event in events
              if event.get("event") == "train" and event.get("noise_scale") is not None
              and (until_step is None or event["step"] <= until_step)]
    return sum(values) / len(values) if values else None


def last_noise_scale(events, until_step=None):
    """The last logged noise_scale at or before until_step (the run's end
    when None): its EMA's view of the last ~1/(1 - decay) steps."""
    values = [event["noise_scale"] for event in events
              if event.get("event") == "train" and event.get("noise_scale") is not None
              and (until_step is None or event["step"] <= until_step)]
    return values[-1] if values else None


def run_row(out, run, target):
    directory = run_dir(out, run)
    record = read_json(directory / "run.json") or {}
    summary = read_json(directory / "summary.json") or {}
    events = read_events(directory)
    row = {"run_id": run.run_id, **run.axes()}
    if record.get("hash") != run.spec_hash:
        return {**row, "status": "pending"}
    status, exit_code = record.get("status") or "pending", record.get("exit_code")
    if status == "submitted":  # on Slurm: its job may have ended since
        status, exit_code = slurm_status(run_dir(out, run))
    elif summary.get("status") in ("completed", "diverged") and status != "failed":
        status = summary["status"]
    row.update(status=status, exit_code=exit_code, steps=summary.get("steps"),
               samples_seen=summary.get("samples_seen"))
    # dtrain reports steps-to-target itself; older binaries do not, and then
    # it is the first evaluation that meets the target.
    if "steps_to_target" in summary or target is None:
        steps, samples = summary.get("steps_to_target"), summary.get("samples_to_target")
    else:
        reached = first_eval_meeting(events, target)
        steps, samples = (reached["step"], reached["samples_seen"]) if reached else (None, None)
    row.update(reached_target=steps is not None, steps_to_target=steps, samples_to_target=samples)
    for column, key in (("val_accuracy", "val_accuracy"), ("val_loss", "val_loss"),
                        ("test_accuracy", "test_accuracy"), ("test_loss", "test_loss"),
                        ("train_accuracy", "train_eval_accuracy"), ("train_loss", "train_eval_loss"),
                        ("generalization_gap", "generalization_gap"), ("wall_seconds", "wall_seconds")):
        row[column] = summary.get(key)
    # The run's whole budget in steps: what a seed that misses the target costs.
    row["budget_steps"] = summary.get("schedule_steps")
    sharpness = summary.get("sharpness") or {}
    row["sharpness"] = sharpness.get("top_eigenvalue")
    row["b_simple"] = mean_noise_scale(events, steps)
    row["b_simple_at_target"] = last_noise_scale(events, steps)
    return row


def collect(study, out):
    """One row per run of the study, in grid order; marks the best LR of each
    (optimizer, global batch, batch schedule)."""
    rows = [run_row(out, run, study.target) for run in study.runs]
    selection = None if study.fixed_budget else study.target
    for schedule in dict.fromkeys(row["batch_schedule"] for row in rows):
        for best in choose_best_lrs(rows, selection, schedule).values():
            for row in best["rows"]:
                row["best_lr"] = True
    for row in rows:
        row.setdefault("best_lr", False)
    return rows


def validation_key(target):
    """The final validation metric that ranks runs that miss the target (or
    every run, in a fixed-budget study: target None)."""
    return "val_loss" if target is not None and target.lower_is_better else "val_accuracy"


def seed_steps(row):
    """A run's steps to target, a miss (or a divergence) counting as its
    budget (infinite where the budget is unknown)."""
    if row["reached_target"]:
        return row["steps_to_target"]
    return row.get("budget_steps") or math.inf


def seed_samples(row):
    if row["reached_target"]:
        return row["samples_to_target"]
    return (row.get("budget_steps") or math.inf) * row["global_batch_size"]


METRIC_KEYS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "train_accuracy", "train_loss",
               "generalization_gap", "sharpness", "b_simple", "b_simple_at_target")


def summarize_seeds(members):
    """One (batch, LR) cell's statistics over its seeds' runs: the median
    steps to target (None unless most seeds reached it), their min and max,
    and the mean of each final metric (None where a seed has none), with its
    min and max under "spread"."""
    reached = sum(1 for row in members if row["reached_target"])
    steps = [seed_steps(row) for row in members]
    median_reached = 2 * reached > len(members)

    def mean(key):
        values = [row.get(key) for row in members]
        return None if any(value is None for value in values) else sum(values) / len(values)

    def spread(key):
        values = [row.get(key) for row in members]
        return None if any(value is None for value in values) else [min(values), max(values)]

    return {"seeds": [row["seed"] for row in members], "seed_steps": steps, "seeds_reached": reached,
            "diverged": any(row["status"] == "diverged" for row in members),
            "steps_to_target": float(np.median(steps)) if median_reached else None,
            "steps_min": min(steps), "steps_max": max(steps),
            "samples_to_target": float(np.median([seed_samples(row) for row in members])) if median_reached else None,
            "wall_seconds_to_target": mean("wall_seconds") if median_reached else None,
            **{key: mean(key) for key in METRIC_KEYS},
            "spread": {key: spread(key) for key in METRIC_KEYS}}


def lr_groups(rows, schedule="constant"):
    """Finished rows of one batch schedule grouped over seeds by (optimizer,
    batch, rule, multiplier, lr)."""
    groups = defaultdict(list)
    for row in rows:
        if row["status"] in ("completed", "diverged") and row.get("batch_schedule", "constant") == schedule:
            groups[(row["optimizer"], row["global_batch_size"], row["lr_rule"], row["lr_multiplier"],
                    row["lr"])].append(row)
    return groups


def lr_cells(rows, target, schedule="constant"):
    """Rows of one batch schedule grouped over seeds by (optimizer, batch, LR
    point), each cell summarized over its seeds (summarize_seeds)."""
    cells = []
    for (optimizer, batch, rule, multiplier, lr), members in lr_groups(rows, schedule).items():
        cells.append({"optimizer": optimizer, "global_batch_size": batch, "lr_rule": rule,
                      "lr_multiplier": multiplier, "lr": lr, "peak_lr": members[0]["peak_lr"], "rows": members,
                      **summarize_seeds(members)})
    return cells


def best_cell(cells, target):
    """Of one batch's LR cells: the one that reaches the target in the fewest
    (median) steps (Shallue et al. 2018); where none does, the best final
    validation metric. Ties in steps go to the better validation metric.
    Target None (a fixed-budget study): the best final validation accuracy
    (the mean over seeds)."""
    key = validation_key(target)
    sign = 1 if target is not None and target.lower_is_better else -1

    def validation(cell):
        return sign * cell[key] if cell[key] is not None else math.inf
    reached = [cell for cell in cells if cell["steps_to_target"] is not None] if target is not None else []
    if reached:
        return min(reached, key=lambda cell: (cell["steps_to_target"], validation(cell)))
    ranked = [cell for cell in cells if cell[key] is not None]
    return min(ranked, key=validation) if ranked else None


def choose_best_lrs(rows, target, schedule="constant"):
    """{(optimizer, batch): cell}: each batch's best LR (best_cell). Constant
    batches only unless `schedule` names another."""
    by_batch = defaultdict(list)
    for cell in lr_cells(rows, target, schedule):
        by_batch[(cell["optimizer"], cell["global_batch_size"])].append(cell)
    best = {}
    for group, cells in sorted(by_batch.items()):
        chosen = best_cell(cells, target)
        if chosen is not None:
            best[group] = chosen
    return best


def fit_steps_to_target(batches, steps):
    """Least-squares fit of S(B) = S_min (1 + B_crit / B).

    S = a + b/B with a = S_min and b = S_min B_crit is linear in (a, b). Each
    point's residual is taken relative to its S, (S - a - b/B) / S, so that a
    run of 20 steps counts as much as one of 20000 (weights 1/S^2; for small
    residuals the same as fitting log S). With a >= 0 and b >= 0: where the
    unconstrained optimum has b < 0 (no gain from any larger batch), b = 0;
    where it has a <= 0 (perfect scaling over the whole range, no plateau
    seen), a = 0 and B_crit is infinite. R^2 is that of log S.
    """
    batches, steps = np.asarray(batches, float), np.asarray(steps, float)
    if len(set(batches.tolist())) < 2:
        raise ValueError("the fit needs steps-to-target at two or more global batches")
    weights = 1 / steps
    design = np.column_stack([weights, weights / batches])
    (a, b), *_ = np.linalg.lstsq(design, np.ones_like(steps), rcond=None)
    if b < 0:
        a, b = np.sum(weights) / np.sum(weights ** 2), 0.0
    if a <= 0:
        x = weights / batches
        a, b = 0.0, np.sum(x) / np.sum(x ** 2)
    predicted = a + b / batches
    log_steps = np.log(steps)
    residual = np.sum((log_steps - np.log(predicted)) ** 2)
    total = np.sum((log_steps - log_steps.mean()) ** 2)
    r2 = 1 - residual / total if total > 0 else (1.0 if residual == 0 else None)
    b_crit = b / a if a > 0 else math.inf
    return {"s_min": float(a), "b_crit": float(b_crit), "e_min": float(b) if a > 0 else math.inf,
            "r2": None if r2 is None else float(r2), "predicted": predicted.tolist()}


def regime(batch, b_crit):
    """Shallue et al.'s regimes, read off the fit: the share of the ideal
    (perfect-scaling) speed-up a batch keeps is B_crit / (B + B_crit)."""
    if not math.isfinite(b_crit):
        return "perfect scaling"
    efficiency = b_crit / (batch + b_crit)
    if efficiency >= 0.75:
        return "perfect scaling"
    if efficiency <= 0.25:
        return "maximal data parallelism"
    return "diminishing returns"


def order_interval(values, tail=BOOTSTRAP_TAIL):
    """[low, high]: the order statistics that leave `tail` of the values
    outside each end (infinite values sort last)."""
    ordered = sorted(values)
    last = len(ordered) - 1
    return [ordered[int(math.floor(tail * last))], ordered[int(math.ceil((1 - tail) * last))]]


def fit_points(best, optimizer):
    """(batches, median steps) of the batches whose best LR reaches the target."""
    points = sorted((batch, cell["steps_to_target"]) for (name, batch), cell in best.items()
                    if name == optimizer and cell["steps_to_target"] is not None)
    return [batch for batch, _ in points], [steps for _, steps in points]


def bootstrap_over_seeds(rows, target, optimizer, dense, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Resample each batch's seeds with replacement (the same draw for every
    LR of the batch, since a seed is a run at every LR), re-choose each
    batch's best LR on the resampled medians, refit; `resamples` times.
    Returns the fits' S_min, B_crit and E_min, their curves at `dense`, each
    batch's chosen peak LRs, and how many resamples could not be fitted."""
    rng = np.random.default_rng(seed)
    by_batch = defaultdict(dict)
    for (name, batch, *lr), members in lr_groups(rows).items():
        if name == optimizer:
            by_batch[batch][tuple(lr)] = ({row["seed"]: row for row in members}, members[0]["peak_lr"])
    seeds = {batch: sorted({seed for by_seed, _ in cells.values() for seed in by_seed})
             for batch, cells in by_batch.items()}
    out = {"s_min": [], "b_crit": [], "e_min": [], "curves": [], "best_peak_lr": defaultdict(list), "unfitted": 0}
    for _ in range(resamples):
        batches, steps = [], []
        for batch in sorted(by_batch):
            draw = rng.choice(seeds[batch], size=len(seeds[batch]), replace=True)
            cells = []
            for by_seed, peak_lr in by_batch[batch].values():
                members = [by_seed[s] for s in draw if s in by_seed]
                if members:
                    cells.append({"peak_lr": peak_lr, **summarize_seeds(members)})
            chosen = best_cell(cells, target)
            if chosen is None:
                continue
            out["best_peak_lr"][batch].append(chosen["peak_lr"])
            if chosen["steps_to_target"] is not None:
                batches.append(batch)
                steps.append(chosen["steps_to_target"])
        try:
            fit = fit_steps_to_target(batches, steps)
        except ValueError:
            out["unfitted"] += 1
            continue
        out["s_min"].append(fit["s_min"])
        out["b_crit"].append(fit["b_crit"])
        out["e_min"].append(fit["e_min"])
        out["curves"].append(fit["s_min"] + fit["e_min"] / dense if math.isfinite(fit["e_min"])
                             else fit_curve_without_plateau(batches, steps, dense))
    return out


def fit_curve_without_plateau(batches, steps, dense):
    """S = e/B where the fit found no plateau (S_min 0, B_crit infinite)."""
    batches, steps = np.asarray(batches, float), np.asarray(steps, float)
    x = (1 / steps) / batches
    return (np.sum(x) / np.sum(x ** 2)) / dense


def fit_study(rows, target, resamples=BOOTSTRAP_RESAMPLES):
    """fit.json's content: per optimizer, the fit and its points, with
    intervals from the bootstrap over seeds where there are two or more; the
    runs that diverged or missed the target."""
    best = choose_best_lrs(rows, target)
    fits = {}
    for optimizer in sorted({optimizer for optimizer, _ in best}):
        points = sorted((batch, cell) for (name, batch), cell in best.items()
                        if name == optimizer and cell["steps_to_target"] is not None)
        entry = {"points": [{"global_batch_size": batch, "steps_to_target": cell["steps_to_target"],
                             "steps_min": cell["steps_min"], "steps_max": cell["steps_max"],
                             "seeds": cell["seeds"], "seed_steps": cell["seed_steps"],
                             "seeds_reached": cell["seeds_reached"],
                             "best_peak_lr": cell["peak_lr"], "b_simple": cell["b_simple"],
                             "b_simple_at_target": cell["b_simple_at_target"]}
                            for batch, cell in points]}
        b_simple = [cell["b_simple"] for _, cell in points if cell["b_simple"] is not None]
        entry["mean_b_simple"] = sum(b_simple) / len(b_simple) if b_simple else None
        try:
            fit = fit_steps_to_target(*fit_points(best, optimizer))
        except ValueError as error:
            entry.update(status="not fitted", reason=str(error))
            fits[optimizer] = entry
            continue
        finite = math.isfinite(fit["b_crit"])
        entry.update(status="fitted" if finite else "no plateau",
                     method="least squares of S = S_min + S_min*B_crit/B with residuals relative to S "
                            "(weights 1/S^2); R^2 of log S; each batch's steps are the median over seeds "
                            "of its best LR, chosen on that median (a seed that misses counts as the budget)",
                     s_min=fit["s_min"], b_crit=fit["b_crit"] if finite else None,
                     e_min=fit["e_min"] if finite else None, r2=fit["r2"])
        for point, predicted in zip(entry["points"], fit["predicted"]):
            point["fitted_steps"] = predicted
            point["regime"] = regime(point["global_batch_size"], fit["b_crit"])
        seeds = min((len(set(cell["seeds"])) for _, cell in points), default=0)
        entry["seeds"] = seeds
        if seeds >= 2:
            batches = [batch for batch, _ in points]
            dense = np.geomspace(min(batches) / 1.5, max(batches) * 1.5, 41)
            boot = bootstrap_over_seeds(rows, target, optimizer, dense, resamples)
            fitted = len(boot["s_min"])
            entry.update(interval_method=f"bootstrap over seeds: each batch's seeds resampled with replacement, "
                                         f"its best LR re-chosen on the resampled median, refitted; {resamples} "
                                         f"resamples ({fitted} fitted), {100 * BOOTSTRAP_TAIL:g}% and "
                                         f"{100 * (1 - BOOTSTRAP_TAIL):g}% points",
                         resamples=resamples, resamples_fitted=fitted)
            if fitted:
                entry["s_min_interval"] = order_interval(boot["s_min"])
                entry["b_crit_interval"] = order_interval(boot["b_crit"])
                entry["e_min_interval"] = order_interval(boot["e_min"])
                curves = np.array(boot["curves"])
                entry["band"] = {"global_batch_size": dense.tolist(),
                                 "low": np.quantile(curves, BOOTSTRAP_TAIL, axis=0).tolist(),
                                 "high": np.quantile(curves, 1 - BOOTSTRAP_TAIL, axis=0).tolist()}
            for point in entry["points"]:
                chosen = boot["best_peak_lr"][point["global_batch_size"]]
                if chosen:
                    point["best_peak_lr_interval"] = order_interval(chosen)
                    point["best_lr_agreement"] = sum(1 for lr in chosen if lr == point["best_peak_lr"]) / len(chosen)
        else:
            entry["interval_method"] = "none: intervals need two or more seeds per batch ([grid] seeds)"
        fits[optimizer] = entry
    finished = [row for row in rows if row["status"] in ("completed", "diverged")]
    result = {"target": str(target), "fits": fits,
              "runs": {"total": len(rows), "finished": len(finished),
                       "diverged": sum(1 for row in finished if row["status"] == "diverged"),
                       "missed_target": sum(1 for row in finished
                                            if row["status"] == "completed" and not row["reached_target"]),
                       "failed": sum(1 for row in rows if row["status"] == "failed")}}
    arms = schedule_arms(rows, target)
    if arms:
        result["batch_schedules"] = arms
    return result


FIXED_BUDGET_METRICS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "generalization_gap",
                        "sharpness", "val_accuracy")


def fixed_budget_study(rows):
    """A fixed-budget study's results (fixed_budget.json): per optimizer and
    global batch, the LR with the best final validation accuracy and its
    final metrics (mean and min–max over seeds), and how the largest batch
    compares with the best smaller one."""
    best = choose_best_lrs(rows, None)
    result = {"mode": "fixed-budget", "selection": "each batch's LR with the best final validation accuracy "
              "(the mean over seeds); metrics are means over seeds with their min and max", "optimizers": {}}
    for optimizer in sorted({name for name, _ in best}):
        points = []
        for (name, batch), cell in sorted(best.items()):
            if name != optimizer:
                continue
            point = {"global_batch_size": batch, "best_peak_lr": cell["peak_lr"], "lr_rule": cell["lr_rule"],
                     "lr_multiplier": cell["lr_multiplier"], "seeds": cell["seeds"],
                     "diverged": cell["diverged"]}
            for key in FIXED_BUDGET_METRICS:
                point[key] = cell[key]
                point[f"{key}_range"] = cell["spread"][key]
            points.append(point)
        entry = {"points": points}
        comparable = [point for point in points if point["test_accuracy"] is not None]
        if len(comparable) >= 2:
            largest = comparable[-1]
            smaller = max(comparable[:-1], key=lambda point: point["test_accuracy"])
            drop = smaller["test_accuracy"] - largest["test_accuracy"]
            beyond = (largest["test_accuracy_range"] is not None and smaller["test_accuracy_range"] is not None
                      and largest["test_accuracy_range"][1] < smaller["test_accuracy_range"][0])
            entry["largest_vs_best_smaller"] = {
                "largest_batch": largest["global_batch_size"], "best_smaller_batch": smaller["global_batch_size"],
                "test_accuracy_drop": drop, "beyond_seed_spread": beyond,
                "gap_change": None if largest["generalization_gap"] is None or smaller["generalization_gap"] is None
                else largest["generalization_gap"] - smaller["generalization_gap"],
                "sharpness_ratio": None if not largest["sharpness"] or not smaller["sharpness"]
                else largest["sharpness"] / smaller["sharpness"]}
        result["optimizers"][optimizer] = entry
    finished = [row for row in rows if row["status"] in ("completed", "diverged")]
    result["runs"] = {"total": len(rows), "finished": len(finished),
                      "diverged": sum(1 for row in finished if row["status"] == "diverged"),
                      "missed_target": 0, "failed": sum(1 for row in rows if row["status"] == "failed")}
    return result


def json_safe(value):
    """JSON has no infinity or NaN: None stands for them, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def schedule_arms(rows, target):
    """Where the grid ran batch schedules: for each (optimizer, final global
    batch), each schedule's best LR cell (the constant batch's too), in the
    order of the grid. With --stop-at-target a run's wall time ends at the
    target."""
    schedules = list(dict.fromkeys(row["batch_schedule"] for row in rows))
    arms = defaultdict(list)
    for schedule in schedules:
        for group, cell in choose_best_lrs(rows, target, schedule).items():
            arms[group].append({"batch_schedule": schedule, **{k: v for k, v in cell.items() if k != "rows"},
                                "runs": [row["run_id"] for row in cell["rows"]]})
    return [{"optimizer": optimizer, "global_batch_size": batch, "arms": cells}
            for (optimizer, batch), cells in sorted(arms.items()) if len(cells) > 1]


def write_csv(rows, path):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: "" if row.get(column) is None else row.get(column) for column in COLUMNS})
