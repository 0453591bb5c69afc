"""report.md and its plots (matplotlib, Agg) from the rows and the fit."""

import math
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from aggregate import choose_best_lrs, lr_cells, read_events, regime  # noqa: E402
from executors import run_dir  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def shown_path(path):
    """A path as the checkout names it (relative to its root), else as given."""
    root = Path(__file__).resolve().parent.parent
    try:
        return Path(path).resolve().relative_to(root)
    except ValueError:
        return path


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
        low = np.array([point.get("steps_min") or value for point, value in zip(points, steps)], float)
        high = np.array([point.get("steps_max") or value for point, value in zip(points, steps)], float)
        seeds = fit.get("seeds") or 1
        if seeds >= 2:
            axes.errorbar(batches, steps, yerr=[steps - low, high - steps], fmt="o", color=color, capsize=3,
                          label=f"{optimizer}: best LR per batch, median and min–max of {seeds} seeds")
        else:
            axes.plot(batches, steps, "o", color=color, label=f"{optimizer}: best LR per batch")
        band = fit.get("band")
        if band:
            axes.fill_between(band["global_batch_size"], band["low"], band["high"], color=color, alpha=0.15,
                              label="95% band of the fit (bootstrap over seeds)")
        dense = np.geomspace(batches.min() / 1.5, batches.max() * 1.5, 200)
        ideal = steps[0] * batches[0] / dense
        keep = ideal >= steps.min() / 4
        axes.plot(dense[keep], ideal[keep], ":", color="grey", label="perfect scaling (S ∝ 1/B)")
        if fit.get("b_crit") is not None:
            s_min, b_crit = fit["s_min"], fit["b_crit"]
            interval = fit.get("b_crit_interval")
            shown = "" if not interval else f" [{interval_text(interval, 0)}]"
            axes.plot(dense, s_min * (1 + b_crit / dense), "-", color=color,
                      label=f"fit S_min(1+B_crit/B): S_min={s_min:.0f}, B_crit={b_crit:.0f}{shown}, R²={fit['r2']:.3f}")
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


def interval_text(interval, digits=4):
    """[low, high] as text; None (infinite) as ∞."""
    def one(value):
        return "∞" if value is None or not math.isfinite(value) else f"{value:.{digits}f}" if digits == 0 else \
            f"{value:.{digits}g}"
    return f"{one(interval[0])}–{one(interval[1])}"


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
            points = [(batch, cell[key], cell["spread"][key]) for batch, cell in points if cell[key] is not None]
            if not points:
                continue
            batches, values, spreads = zip(*points)
            color = COLORS[index % len(COLORS)]
            if all(spread is not None for spread in spreads):
                errors = [[value - spread[0] for value, spread in zip(values, spreads)],
                          [spread[1] - value for value, spread in zip(values, spreads)]]
                axes.errorbar(batches, values, yerr=errors, fmt=style, color=color, label=name, markersize=4,
                              capsize=2)
            else:
                axes.plot(batches, values, style, color=color, label=name, markersize=4)
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


def steps_text(cell):
    """The median steps to target, with the seeds' min–max where there are several."""
    text = number(cell["steps_to_target"], 6)
    if len(cell.get("seeds", [])) >= 2 and cell["steps_to_target"] is not None:
        text += f" ({interval_text([cell['steps_min'], cell['steps_max']], 0)})"
    return text


def noise_sentences(fit):
    """What the seeds' spread does to the conclusions: whether neighbouring
    batches differ by more than their seeds, which regimes hold across the
    B_crit interval, where the best LR is a close call, and the runs that
    diverged or missed."""
    lines = []
    for optimizer, entry in sorted(fit["fits"].items()):
        points = entry["points"]
        if entry.get("seeds", 1) < 2 or len(points) < 2:
            continue
        lines += ["", f"### What the seeds' spread does to the conclusions ({optimizer}, {entry['seeds']} seeds)", ""]

        def top(point):
            return math.inf if point["steps_max"] is None else point["steps_max"]
        for point, after in zip(points, points[1:]):
            b, c = point["global_batch_size"], after["global_batch_size"]
            if after["steps_min"] <= top(point) and point["steps_min"] <= top(after):
                lines.append(f"- Batch {b} and {c} differ by less than their seeds' spread "
                             f"({point['steps_to_target']:.0f} [{interval_text([point['steps_min'], point['steps_max']], 0)}]"
                             f" against {after['steps_to_target']:.0f} "
                             f"[{interval_text([after['steps_min'], after['steps_max']], 0)}] steps).")
            else:
                lines.append(f"- Batch {c} needs fewer steps than batch {b} on every seed "
                             f"({after['steps_to_target']:.0f} against {point['steps_to_target']:.0f}, median).")
        interval = entry.get("b_crit_interval")
        if interval and entry.get("b_crit") is not None:
            low = interval[0]
            high = math.inf if interval[1] is None else interval[1]
            kept, moved = [], []
            for point in points:
                batch = point["global_batch_size"]
                (kept if regime(batch, low) == regime(batch, high) else moved).append(batch)
            lines.append(f"- B_crit {entry['b_crit']:.0f}, 95% interval {interval_text(interval, 0)}. "
                         + (f"The regime of batch {', '.join(map(str, kept))} is the same across it"
                            if kept else "No batch keeps its regime across it")
                         + (f"; batch {', '.join(map(str, moved))} may fall in either of two regimes." if moved else "."))
        close = [point for point in points if point.get("best_lr_agreement") is not None
                 and point["best_lr_agreement"] < 0.9]
        for point in close:
            lines.append(f"- The best LR at batch {point['global_batch_size']} is a close call: the bootstrap "
                         f"re-chooses it in {100 * point['best_lr_agreement']:.0f}% of resamples (peak LR "
                         f"{interval_text(point['best_peak_lr_interval'])}).")
        if not close:
            lines.append("- Each batch's best LR is re-chosen in at least 90% of the resamples.")
    runs = fit.get("runs")
    if runs:
        lines += ["", f"Runs: {runs['finished']} of {runs['total']} finished; {runs['diverged']} diverged and "
                      f"{runs['missed_target']} missed the target within the budget"
                  + (f"; {runs['failed']} failed" if runs["failed"] else "") + "."]
    return lines


def plot_fixed_budget(fit, path):
    """Test accuracy, the generalization gap and sharpness against the global
    batch at each batch's best LR, with the seeds' min–max."""
    figure, panels = plt.subplots(1, 3, figsize=(12, 3.8))
    for index, (optimizer, entry) in enumerate(sorted(fit["optimizers"].items())):
        color = COLORS[index % len(COLORS)]
        for axes, key, label in zip(panels, ("test_accuracy", "generalization_gap", "sharpness"),
                                    ("final test accuracy", "generalization gap (train − test accuracy)",
                                     "sharpness (top Hessian eigenvalue)")):
            points = [point for point in entry["points"] if point[key] is not None]
            if not points:
                axes.text(0.5, 0.5, f"no {key}", ha="center", va="center", transform=axes.transAxes)
                continue
            batches = [point["global_batch_size"] for point in points]
            values = [point[key] for point in points]
            ranges = [point[f"{key}_range"] or [value, value] for point, value in zip(points, values)]
            axes.errorbar(batches, values, yerr=[[v - r[0] for v, r in zip(values, ranges)],
                                                 [r[1] - v for v, r in zip(values, ranges)]],
                          fmt="o-", color=color, capsize=3, markersize=4,
                          label=f"{optimizer}: best LR per batch, mean and min–max over seeds")
            axes.set_xscale("log", base=2)
            if key == "sharpness":
                axes.set_yscale("log")
            axes.set(xlabel="global batch B", ylabel=label)
            axes.grid(True, alpha=0.3)
    panels[0].legend(fontsize=7)
    save(figure, path)


def fixed_budget_sentences(fit):
    """One sentence per optimizer: whether large batches generalize worse here, and by how much."""
    lines = []
    for optimizer, entry in sorted(fit["optimizers"].items()):
        compared = entry.get("largest_vs_best_smaller")
        if not compared:
            continue
        largest = next(p for p in entry["points"] if p["global_batch_size"] == compared["largest_batch"])
        smaller = next(p for p in entry["points"] if p["global_batch_size"] == compared["best_smaller_batch"])
        drop = compared["test_accuracy_drop"]
        verdict = ("large batches generalize worse here" if drop > 0 and compared["beyond_seed_spread"] else
                   "large batches generalize no worse here beyond the seeds' spread" if drop > 0 else
                   "large batches generalize no worse here")
        sharpness = ""
        if compared.get("sharpness_ratio"):
            sharpness = (f"; the largest batch's minimum is {compared['sharpness_ratio']:.2f}× as sharp "
                         f"({largest['sharpness']:.3g} against {smaller['sharpness']:.3g})")
        gap = ""
        if compared.get("gap_change") is not None:
            gap = f"; its generalization gap is {100 * compared['gap_change']:+.2f} points"

        def accuracy(point):
            shown = f"{100 * point['test_accuracy']:.2f}%"
            if point["test_accuracy_range"] and len(point["seeds"]) > 1:
                low, high = point["test_accuracy_range"]
                shown += f" [{100 * low:.2f}–{100 * high:.2f}]"
            return shown
        lines.append(f"- {optimizer}: at batch {compared['largest_batch']} the test accuracy is {accuracy(largest)} "
                     f"against {accuracy(smaller)} at batch {compared['best_smaller_batch']} (the best smaller "
                     f"batch), {100 * abs(drop):.2f} points {'lower' if drop > 0 else 'higher'}: "
                     f"{verdict}{gap}{sharpness}.")
    return lines


def write_fixed_budget_report(study, out, rows, fit, wall_seconds):
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    if any(entry["points"] for entry in fit["optimizers"].values()):
        plot_fixed_budget(fit, plots / "fixed_budget.png")
        written.append(plots / "fixed_budget.png")
    counts = Counter(row["status"] for row in rows)
    lines = [f"# Batch-size study at a fixed budget: {study.name}{' (quick)' if study.quick else ''}", "",
             f"Study file `{study.path}`, base config `{shown_path(study.base_config)}`, {study.ranks} rank(s) per run; every "
             f"run trains {study.describe_budget()} without stopping at a target (Keskar et al. 2017's "
             "comparison); each batch's LR is the one with the best final validation accuracy.", "",
             f"{len(rows)} runs: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
             + (f"; driver wall time {wall_seconds:.0f} s" if wall_seconds is not None else "") + ".", "",
             "Files: `results.csv` (one row per run), `fixed_budget.json` (per batch), `runs/RUN_ID/`. How to read "
             "this: docs/studies.md.", "", "## Does a large batch generalize worse?", ""]
    lines += fixed_budget_sentences(fit) or ["Fewer than two batches finished: nothing to compare yet."]
    lines += ["", "## Per global batch (best LR; means over seeds, min–max in brackets)", "",
              "| optimizer | B | best LR | peak LR | test acc | test loss | train acc (subset) | gap | sharpness | "
              "seeds |", "|---|---|---|---|---|---|---|---|---|---|"]

    def with_range(point, key, scale=1, digits=4):
        value = point[key]
        if value is None:
            return "–"
        text = f"{scale * value:.{digits}g}"
        if point[f"{key}_range"] and len(point["seeds"]) > 1:
            low, high = point[f"{key}_range"]
            text += f" [{scale * low:.{digits}g}–{scale * high:.{digits}g}]"
        return text
    for optimizer, entry in sorted(fit["optimizers"].items()):
        for point in entry["points"]:
            label = (f"lr {point['best_peak_lr']:g}" if point["lr_multiplier"] is None
                     else f"{point['lr_rule']} x{point['lr_multiplier']:g}")
            lines.append(f"| {optimizer} | {point['global_batch_size']} | {label} | {point['best_peak_lr']:.4g} | "
                         f"{with_range(point, 'test_accuracy')} | {with_range(point, 'test_loss')} | "
                         f"{with_range(point, 'train_accuracy')} | {with_range(point, 'generalization_gap', 1, 3)} | "
                         f"{with_range(point, 'sharpness')} | {len(point['seeds'])} |")
    runs = fit["runs"]
    lines += ["", f"Runs: {runs['finished']} of {runs['total']} finished; {runs['diverged']} diverged"
              + (f"; {runs['failed']} failed" if runs["failed"] else "") + ".", "", "## Plots", ""]
    for path in written:
        lines += [f"![{path.name}](plots/{path.name})", "",
                  "Final test accuracy, generalization gap (train-subset accuracy minus test accuracy) and "
                  "sharpness (the top eigenvalue of the training loss's Hessian, `--sharpness-at-end`) at each "
                  "batch's best LR, with the seeds' min–max.", ""]
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{row['run_id']}`: exit code {row['exit_code']}" for row in failed]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return written


def write_report(study, out, rows, fit, wall_seconds=None):
    """Writes out/report.md and out/plots/*.png; returns the PNG paths."""
    if study.fixed_budget:
        return write_fixed_budget_report(study, out, rows, fit, wall_seconds)
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
             f"Study file `{study.path}`, base config `{shown_path(study.base_config)}`, {study.ranks} rank(s) per run; "
             f"target {study.target} (the best LR of each batch is chosen on it), budget "
             f"{study.describe_budget()} per run.", "",
             f"{len(rows)} runs: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
             + (f"; driver wall time {wall_seconds:.0f} s" if wall_seconds is not None else "") + ".", "",
             "Files: `results.csv` (one row per run), `fit.json` (the fit), `runs/RUN_ID/` (each run's "
             "dtrain outputs). How to read this: docs/studies.md.", ""]
    lines += ["## Fit of S(B) = S_min (1 + B_crit / B)", "",
              "Intervals: 95% bootstrap over seeds (fit.json's `interval_method`).", "",
              "| optimizer | status | S_min (steps) | B_crit | E_min = B_crit·S_min (samples) | R² (log S) | "
              "mean B_simple | batches fitted | seeds |", "|---|---|---|---|---|---|---|---|---|"]

    def with_interval(entry, key):
        interval = entry.get(f"{key}_interval")
        return number(entry.get(key)) + ("" if not interval else f" [{interval_text(interval)}]")
    for optimizer, entry in sorted(fits.items()):
        lines.append(f"| {optimizer} | {entry['status']} | {with_interval(entry, 's_min')} | "
                     f"{with_interval(entry, 'b_crit')} | {with_interval(entry, 'e_min')} | "
                     f"{number(entry.get('r2'), 3)} | {number(entry.get('mean_b_simple'))} | "
                     f"{len(entry['points'])} | {entry.get('seeds', '–')} |")
    lines += noise_sentences(fit)
    lines += ["", "## Best LR per global batch", "",
              "Steps to target: the median over seeds, with their min–max (a seed that missed counts as the "
              "budget); metrics: the mean over seeds.", "",
              "| optimizer | B | best LR | peak LR | steps to target | samples to target | val acc | test acc | "
              "gap | B_simple (mean) | B_simple (at target) | regime |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    regimes = {(optimizer, point["global_batch_size"]): point.get("regime", "")
               for optimizer, entry in fits.items() for point in entry["points"]}
    for (optimizer, batch), cell in sorted(best.items()):
        lines.append(f"| {optimizer} | {batch} | {lr_label(cell)} | {number(cell['peak_lr'])} | "
                     f"{steps_text(cell)} | {number(cell['samples_to_target'], 8)} | "
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
