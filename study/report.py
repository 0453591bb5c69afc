"""report.md and its plots (matplotlib, Agg) from the rows and the fit."""

import math
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from aggregate import choose_best_lrs, lr_cells, read_events  # noqa: E402
from executors import run_dir  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def lr_label(cell):
    if cell["lr_multiplier"] is None:
        return f"lr {cell['lr']:g}"
    return f"{cell['lr_rule']} x{cell['lr_multiplier']:g}"


def same_lr(cell, other):
    return all(cell[key] == other[key] for key in ("optimizer", "global_batch_size", "lr_rule", "lr_multiplier", "lr"))


def save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save_log_log(figure, axes, ylabel, path):
    """A plot against the global batch (log 2) of a log-scale quantity, with its legend."""
    axes.set(xscale="log", yscale="log", xlabel="global batch B", ylabel=ylabel)
    axes.set_xscale("log", base=2)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    save(figure, path)


def plot_steps(best, fits, path):
    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    for index, (optimizer, fit) in enumerate(sorted(fits.items())):
        color = COLORS[index % len(COLORS)]
        points = fit["points"]
        if not points:
            continue
        batches = np.array([point["global_batch_size"] for point in points], float)
        steps = np.array([point["steps_to_target"] for point in points], float)
        axes.plot(batches, steps, "o", color=color, label=f"{optimizer}: best LR per batch")
        dense = np.geomspace(batches.min() / 1.5, batches.max() * 1.5, 200)
        ideal = steps[0] * batches[0] / dense
        keep = ideal >= steps.min() / 4
        axes.plot(dense[keep], ideal[keep], ":", color="grey", label="perfect scaling (S ∝ 1/B)")
        if fit.get("b_crit") is not None:
            s_min, b_crit = fit["s_min"], fit["b_crit"]
            axes.plot(dense, s_min * (1 + b_crit / dense), "-", color=color,
                      label=f"fit S_min(1+B_crit/B): S_min={s_min:.0f}, B_crit={b_crit:.0f}, R²={fit['r2']:.3f}")
            axes.axvline(b_crit, color=color, linestyle="--", linewidth=1)
            axes.axhline(s_min, color=color, linestyle="-.", linewidth=0.8)
        if fit.get("mean_b_simple") is not None and fit["mean_b_simple"] > 0:
            axes.axvline(fit["mean_b_simple"], color=color, linestyle=(0, (1, 3)), linewidth=1.5,
                         label=f"measured B_simple (mean to target) = {fit['mean_b_simple']:.0f}")
        at_target = points[0].get("b_simple_at_target")
        if at_target is not None and at_target > 0:
            axes.axvline(at_target, color="grey", linestyle=(0, (1, 3)), linewidth=1.5,
                         label=f"B_simple at the target, B={points[0]['global_batch_size']} run = {at_target:.0f}")
    save_log_log(figure, axes, "steps to target (best LR)", path)


def plot_best_lr(cells, best, path):
    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    optimizers = sorted({cell["optimizer"] for cell in cells})
    for index, optimizer in enumerate(optimizers):
        color = COLORS[index % len(COLORS)]
        tried = [cell for cell in cells if cell["optimizer"] == optimizer]
        for kind, marker, selector in (("reached", "o", lambda c: c["steps_to_target"] is not None),
                                       ("missed", "s", lambda c: c["steps_to_target"] is None and not c["diverged"]),
                                       ("diverged", "x", lambda c: c["diverged"])):
            chosen = [cell for cell in tried if selector(cell)]
            if chosen:
                axes.plot([c["global_batch_size"] for c in chosen], [c["peak_lr"] for c in chosen], marker,
                          color="grey", alpha=0.5, markersize=4, fillstyle="none",
                          label=f"tried, {kind}" if index == 0 else None)
        points = sorted((batch, cell["peak_lr"]) for (name, batch), cell in best.items() if name == optimizer)
        if not points:
            continue
        batches, lrs = (np.array(values, float) for values in zip(*points))
        axes.plot(batches, lrs, "o-", color=color, label=f"{optimizer}: best peak LR")
        axes.plot(batches, lrs[0] * batches / batches[0], "--", color=color, alpha=0.6,
                  label="linear rule through the smallest batch")
        axes.plot(batches, lrs[0] * np.sqrt(batches / batches[0]), ":", color=color, alpha=0.8,
                  label="sqrt rule through the smallest batch")
    save_log_log(figure, axes, "peak learning rate", path)


def plot_generalization(cells, best, path):
    """Tuned LR beside each fixed rule (the multiplier-1 runs of each rule)."""
    figure, panels = plt.subplots(1, 3, figsize=(12, 3.8))
    series = []
    for optimizer in sorted({cell["optimizer"] for cell in cells}):
        tuned = sorted((batch, cell) for (name, batch), cell in best.items() if name == optimizer)
        series.append((f"{optimizer} tuned LR", tuned, "o-"))
        for rule in sorted({cell["lr_rule"] for cell in cells if cell["lr_multiplier"] == 1}):
            fixed = sorted((cell["global_batch_size"], cell) for cell in cells
                           if cell["optimizer"] == optimizer and cell["lr_rule"] == rule and cell["lr_multiplier"] == 1)
            series.append((f"{optimizer} {rule} rule (x1)", fixed, "s--" if rule == "linear" else "^:"))
    for axes, key, label in zip(panels, ("val_accuracy", "test_accuracy", "generalization_gap"),
                                ("final validation accuracy", "final test accuracy",
                                 "generalization gap (train − test accuracy)")):
        for index, (name, points, style) in enumerate(series):
            points = [(batch, cell[key]) for batch, cell in points if cell[key] is not None]
            if points:
                axes.plot(*zip(*points), style, color=COLORS[index % len(COLORS)], label=name, markersize=4)
        axes.set_xscale("log", base=2)
        axes.set(xlabel="global batch B", ylabel=label)
        axes.grid(True, alpha=0.3)
    panels[0].legend(fontsize=7)
    save(figure, path)


def plot_noise_scale(study, out, best, path, how_many=4):
    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    chosen = sorted((batch, cell) for (_, batch), cell in best.items())
    if len(chosen) > how_many:
        picks = np.unique(np.round(np.linspace(0, len(chosen) - 1, how_many)).astype(int))
        chosen = [chosen[i] for i in picks]
    runs = {run.run_id: run for run in study.runs}
    drawn, lowest = False, math.inf
    for index, (batch, cell) in enumerate(chosen):
        row = cell["rows"][0]
        events = [event for event in read_events(run_dir(out, runs[row["run_id"]]))
                  if event.get("event") == "train" and event.get("noise_scale") is not None]
        if not events:
            continue
        samples = [event["samples_seen"] for event in events]
        values = [event["noise_scale"] for event in events]
        lowest = min(lowest, min(values))
        color = COLORS[index % len(COLORS)]
        axes.plot(samples, values, "-", color=color, label=f"B={batch} ({cell['optimizer']}, {lr_label(cell)})")
        if row["samples_to_target"] is not None:
            axes.axvline(row["samples_to_target"], color=color, linestyle=":", linewidth=1)
        drawn = True
    if drawn:
        axes.set_xscale("log")
        axes.set_yscale("log" if lowest > 0 else "symlog")
        axes.legend(fontsize=7)
    else:
        axes.text(0.5, 0.5, "no noise_scale in metrics.jsonl\n(run with --noise-scale true)",
                  ha="center", va="center", transform=axes.transAxes)
    axes.set(xlabel="samples seen", ylabel="B_simple = tr(Σ)/|G|² (EMA)")
    axes.grid(True, which="both", alpha=0.3)
    save(figure, path)


def plot_heatmap(cells, best, optimizer, path):
    mine = [cell for cell in cells if cell["optimizer"] == optimizer]
    batches = sorted({cell["global_batch_size"] for cell in mine})
    points = sorted({(cell["lr_rule"], -1 if cell["lr_multiplier"] is None else cell["lr_multiplier"], cell["lr"])
                     for cell in mine})
    grid = np.full((len(points), len(batches)), np.nan)
    figure, axes = plt.subplots(figsize=(max(5, 0.7 * len(batches) + 2.5), max(3, 0.45 * len(points) + 1.5)))
    for cell in mine:
        i = points.index((cell["lr_rule"], -1 if cell["lr_multiplier"] is None else cell["lr_multiplier"], cell["lr"]))
        j = batches.index(cell["global_batch_size"])
        steps = cell["steps_to_target"]
        if steps is not None:
            grid[i, j] = math.log10(steps)
            text, color = f"{steps:.0f}", "black"
        else:
            text, color = ("div" if cell["diverged"] else "—"), "black"
            axes.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="#f4cccc" if cell["diverged"] else "#dddddd"))
        axes.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
        chosen = best.get((optimizer, cell["global_batch_size"]))
        if chosen and same_lr(chosen, cell):
            axes.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="YlGnBu", aspect="auto", origin="lower")
    figure.colorbar(image, ax=axes, label="log10 steps to target")
    axes.set_xticks(range(len(batches)), [str(batch) for batch in batches], rotation=45)
    axes.set_yticks(range(len(points)),
                    [f"lr {lr:g}" if multiplier < 0 else f"{rule} x{multiplier:g}" for rule, multiplier, lr in points])
    axes.set(xlabel="global batch B", ylabel="LR (rule x multiplier)",
             title=f"{optimizer}: steps to target\n(div: diverged, —: not reached, box: best LR)")
    axes.set_xlim(-0.5, len(batches) - 0.5)
    axes.set_ylim(-0.5, len(points) - 0.5)
    save(figure, path)


def number(value, digits=4):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def write_report(study, out, rows, fit, wall_seconds=None):
    """Writes out/report.md and out/plots/*.png; returns the PNG paths."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    cells = lr_cells(rows, study.target)
    best = choose_best_lrs(rows, study.target)
    fits = fit["fits"]
    optimizers = sorted({cell["optimizer"] for cell in cells})

    figures = [("steps_to_target.png", lambda p: plot_steps(best, fits, p),
                "Steps to reach the target at the best LR of each global batch (log-log), with the perfect-scaling "
                "line S ∝ 1/B through the smallest batch, the fitted S(B) = S_min(1 + B_crit/B), B_crit (dashed) "
                "the measured mean B_simple (dotted) and the smallest batch's B_simple at the target (grey dotted)."),
               ("best_lr.png", lambda p: plot_best_lr(cells, best, p),
                "The best peak LR of each global batch (chosen on validation) against the linear and square-root "
                "rules drawn through the smallest batch; grey marks are every LR tried."),
               ("generalization.png", lambda p: plot_generalization(cells, best, p),
                "Final validation and test accuracy and the generalization gap against the global batch, for the "
                "tuned LR and for each LR rule at its own value (multiplier 1)."),
               ("noise_scale.png", lambda p: plot_noise_scale(study, out, best, p),
                "The gradient noise scale B_simple logged during training (best-LR runs of a few batch sizes) "
                "against samples seen; dotted lines mark where each run reached the target.")]
    for optimizer in optimizers:
        figures.append((f"heatmap_{optimizer}.png",
                        lambda p, optimizer=optimizer: plot_heatmap(cells, best, optimizer, p),
                        f"Steps to target over global batch and LR ({optimizer}); grey cells never reached the "
                        "target, red ones diverged, the boxed cell is each batch's best LR."))
    written = []
    for name, draw, _ in figures:
        if cells:
            draw(plots / name)
            written.append(plots / name)

    counts = Counter(row["status"] for row in rows)
    lines = [f"# Batch-size study: {study.name}{' (quick)' if study.quick else ''}", "",
             f"Study file `{study.path}`, base config `{study.base_config}`, {study.ranks} rank(s) per run; "
             f"target {study.target} (the best LR of each batch is chosen on it), budget "
             f"{study.describe_budget()} per run.", "",
             f"{len(rows)} runs: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
             + (f"; driver wall time {wall_seconds:.0f} s" if wall_seconds is not None else "") + ".", "",
             "Files: `results.csv` (one row per run), `fit.json` (the fit), `runs/RUN_ID/` (each run's "
             "dtrain outputs). How to read this: docs/studies.md.", ""]
    lines += ["## Fit of S(B) = S_min (1 + B_crit / B)", "",
              "| optimizer | status | S_min (steps) | B_crit | E_min = B_crit·S_min (samples) | R² (log S) | "
              "mean B_simple | batches fitted |", "|---|---|---|---|---|---|---|---|"]
    for optimizer, entry in sorted(fits.items()):
        lines.append(f"| {optimizer} | {entry['status']} | {number(entry.get('s_min'))} | {number(entry.get('b_crit'))} | "
                     f"{number(entry.get('e_min'))} | {number(entry.get('r2'), 3)} | {number(entry.get('mean_b_simple'))} | "
                     f"{len(entry['points'])} |")
    lines += ["", "## Best LR per global batch", "",
              "| optimizer | B | best LR | peak LR | steps to target | samples to target | val acc | test acc | "
              "gap | B_simple (mean) | B_simple (at target) | regime |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    regimes = {(optimizer, point["global_batch_size"]): point.get("regime", "")
               for optimizer, entry in fits.items() for point in entry["points"]}
    for (optimizer, batch), cell in sorted(best.items()):
        lines.append(f"| {optimizer} | {batch} | {lr_label(cell)} | {number(cell['peak_lr'])} | "
                     f"{number(cell['steps_to_target'], 6)} | {number(cell['samples_to_target'], 8)} | "
                     f"{number(cell['val_accuracy'])} | {number(cell['test_accuracy'])} | "
                     f"{number(cell['generalization_gap'], 3)} | {number(cell['b_simple'])} | "
                     f"{number(cell['b_simple_at_target'])} | "
                     f"{regimes.get((optimizer, batch), 'target not reached')} |")
    for entry in fit.get("batch_schedules", []):
        arms = entry["arms"]
        constant = next((arm for arm in arms if arm["batch_schedule"] == "constant"), None)
        lines += ["", f"## Batch-size schedules to global batch {entry['global_batch_size']} ({entry['optimizer']})", "",
                  "Each schedule at its own best LR, chosen as for a constant batch (the fewest steps to target); "
                  "the LR follows the batch by the run's rule (`--batch-schedule-lr scale`, the default). Samples "
                  "count what was trained on; wall seconds are the run's, which end at the target under "
                  "`--stop-at-target true`. Every arm of a batch has the same micro-batch.",
                  "", "| schedule | best LR | steps to target | samples to target | wall seconds | samples vs constant | "
                  "wall vs constant |", "|---|---|---|---|---|---|---|"]
        for arm in arms:
            def versus(key):
                if constant is None or arm[key] is None or not constant[key]:
                    return "–"
                return f"{arm[key] / constant[key]:.2f}×"
            lines.append(f"| `{arm['batch_schedule']}` | {lr_label(arm)} | {number(arm['steps_to_target'], 6)} | "
                         f"{number(arm['samples_to_target'], 8)} | {number(arm['wall_seconds_to_target'], 3)} | "
                         f"{versus('samples_to_target')} | {versus('wall_seconds_to_target')} |")
    lines += ["", "## Plots", ""]
    for (name, _, sentence), path in zip(figures, written):
        lines += [f"![{name}](plots/{name})", "", sentence, ""]
    failed = [row for row in rows if row["status"] == "failed"]
    unfinished = [row for row in rows if row["status"] not in ("completed", "diverged", "failed")]
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{row['run_id']}`: exit code {row['exit_code']} "
                                           f"(see `runs/{row['run_id']}/dtrain.log`)" for row in failed] + [""]
    if unfinished:
        lines += ["## Unfinished runs", ""] + [f"- `{row['run_id']}`: {row['status']}" for row in unfinished] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return written
