"""From run folders to results: one row per run (results.csv), the best LR of
each global batch chosen on validation, and the fit of McCandlish et al.'s
S(B) = S_min (1 + B_crit / B) to the best steps-to-target (fit.json).
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
    "generalization_gap", "b_simple", "b_simple_at_target", "wall_seconds", "best_lr",
]
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
    if "steps_to_target" in summary:
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
    row["b_simple"] = mean_noise_scale(events, steps)
    row["b_simple_at_target"] = last_noise_scale(events, steps)
    return row


def collect(study, out):
    """One row per run of the study, in grid order; marks the best LR of each
    (optimizer, global batch, batch schedule)."""
    rows = [run_row(out, run, study.target) for run in study.runs]
    for schedule in dict.fromkeys(row["batch_schedule"] for row in rows):
        for best in choose_best_lrs(rows, study.target, schedule).values():
            for row in best["rows"]:
                row["best_lr"] = True
    for row in rows:
        row.setdefault("best_lr", False)
    return rows


def validation_key(target):
    """The final validation metric that ranks runs that miss the target."""
    return "val_loss" if target.lower_is_better else "val_accuracy"


def lr_cells(rows, target, schedule="constant"):
    """Rows of one batch schedule grouped over seeds by (optimizer, batch, LR
    point): each cell's mean steps-to-target (None unless every seed reached
    it) and mean final metrics."""
    groups = defaultdict(list)
    for row in rows:
        if row["status"] in ("completed", "diverged") and row.get("batch_schedule", "constant") == schedule:
            groups[(row["optimizer"], row["global_batch_size"], row["lr_rule"], row["lr_multiplier"],
                    row["lr"])].append(row)
    cells = []
    for (optimizer, batch, rule, multiplier, lr), members in groups.items():
        def mean(key):
            values = [row[key] for row in members]
            return None if any(value is None for value in values) else sum(values) / len(values)
        reached = all(row["reached_target"] for row in members)
        cells.append({"optimizer": optimizer, "global_batch_size": batch, "lr_rule": rule,
                      "lr_multiplier": multiplier, "lr": lr, "peak_lr": members[0]["peak_lr"], "rows": members,
                      "diverged": any(row["status"] == "diverged" for row in members),
                      "steps_to_target": mean("steps_to_target") if reached else None,
                      "samples_to_target": mean("samples_to_target") if reached else None,
                      "wall_seconds_to_target": mean("wall_seconds") if reached else None,
                      **{key: mean(key) for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss",
                                                     "train_accuracy", "train_loss", "generalization_gap",
                                                     "b_simple", "b_simple_at_target")}})
    return cells


def choose_best_lrs(rows, target, schedule="constant"):
    """{(optimizer, batch): cell}: the LR that reaches the target in the fewest
    steps (Shallue et al. 2018); where none does, the best final validation
    metric. Ties in steps go to the better validation metric. Constant
    batches only unless `schedule` names another."""
    key = validation_key(target)
    sign = 1 if target.lower_is_better else -1
    by_batch = defaultdict(list)
    for cell in lr_cells(rows, target, schedule):
        by_batch[(cell["optimizer"], cell["global_batch_size"])].append(cell)
    best = {}
    for group, cells in sorted(by_batch.items()):
        def validation(cell):
            return sign * cell[key] if cell[key] is not None else math.inf
        reached = [cell for cell in cells if cell["steps_to_target"] is not None]
        if reached:
            best[group] = min(reached, key=lambda cell: (cell["steps_to_target"], validation(cell)))
        else:
            ranked = [cell for cell in cells if cell[key] is not None]
            if ranked:
                best[group] = min(ranked, key=validation)
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


def fit_study(rows, target):
    """fit.json's content: per optimizer, the fit and its points."""
    best = choose_best_lrs(rows, target)
    fits = {}
    for optimizer in sorted({optimizer for optimizer, _ in best}):
        points = sorted((batch, cell) for (name, batch), cell in best.items()
                        if name == optimizer and cell["steps_to_target"] is not None)
        entry = {"points": [{"global_batch_size": batch, "steps_to_target": cell["steps_to_target"],
                             "best_peak_lr": cell["peak_lr"], "b_simple": cell["b_simple"],
                             "b_simple_at_target": cell["b_simple_at_target"]}
                            for batch, cell in points]}
        b_simple = [cell["b_simple"] for _, cell in points if cell["b_simple"] is not None]
        entry["mean_b_simple"] = sum(b_simple) / len(b_simple) if b_simple else None
        try:
            fit = fit_steps_to_target([batch for batch, _ in points], [cell["steps_to_target"] for _, cell in points])
        except ValueError as error:
            entry.update(status="not fitted", reason=str(error))
            fits[optimizer] = entry
            continue
        finite = math.isfinite(fit["b_crit"])
        entry.update(status="fitted" if finite else "no plateau",
                     method="least squares of S = S_min + S_min*B_crit/B with residuals relative to S "
                            "(weights 1/S^2); R^2 of log S",
                     s_min=fit["s_min"], b_crit=fit["b_crit"] if finite else None,
                     e_min=fit["e_min"] if finite else None, r2=fit["r2"])
        for point, predicted in zip(entry["points"], fit["predicted"]):
            point["fitted_steps"] = predicted
            point["regime"] = regime(point["global_batch_size"], fit["b_crit"])
        fits[optimizer] = entry
    result = {"target": str(target), "fits": fits}
    arms = schedule_arms(rows, target)
    if arms:
        result["batch_schedules"] = arms
    return result


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
