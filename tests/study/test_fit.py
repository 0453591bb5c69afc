"""Unit tests of the study driver's arithmetic: the S(B) fit, the choice of
the best LR on validation, steps-to-target from metrics, B_simple, batch
splits and the study file's parsing.

    /usr/bin/python3 tests/study/test_fit.py
"""

import math
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "study"))
sys.dont_write_bytecode = True

import aggregate  # noqa: E402
import spec  # noqa: E402


class FitTest(unittest.TestCase):
    def test_recovers_a_known_curve_exactly(self):
        for s_min, b_crit in ((1200.0, 700.0), (35.0, 90.0), (5000.0, 8192.0)):
            batches = [16 * 2 ** i for i in range(10)]
            steps = [s_min * (1 + b_crit / batch) for batch in batches]
            fit = aggregate.fit_steps_to_target(batches, steps)
            self.assertAlmostEqual(fit["s_min"] / s_min, 1, places=9)
            self.assertAlmostEqual(fit["b_crit"] / b_crit, 1, places=9)
            self.assertAlmostEqual(fit["e_min"] / (s_min * b_crit), 1, places=9)
            self.assertAlmostEqual(fit["r2"], 1, places=12)

    def test_small_and_large_steps_count_alike(self):
        # 10% too many steps at the smallest batch (the largest S) moves the
        # fit no more than 10% too many at the largest batch (the smallest S).
        batches = [16, 64, 256, 1024, 4096]
        exact = [100 * (1 + 300 / batch) for batch in batches]
        low = aggregate.fit_steps_to_target(batches, [exact[0] * 1.1] + exact[1:])
        high = aggregate.fit_steps_to_target(batches, exact[:-1] + [exact[-1] * 1.1])
        self.assertLess(abs(low["r2"] - high["r2"]), 0.05)

    def test_no_gain_from_larger_batches_gives_b_crit_zero(self):
        fit = aggregate.fit_steps_to_target([64, 256, 1024], [100, 110, 130])
        self.assertEqual(fit["b_crit"], 0)
        self.assertGreater(fit["s_min"], 100)
        self.assertLessEqual(fit["r2"], 1)

    def test_perfect_scaling_throughout_has_no_plateau(self):
        fit = aggregate.fit_steps_to_target([64, 128, 256], [4000, 2000, 999])
        self.assertEqual(fit["s_min"], 0)
        self.assertTrue(math.isinf(fit["b_crit"]))

    def test_needs_two_batch_sizes(self):
        with self.assertRaises(ValueError):
            aggregate.fit_steps_to_target([256, 256], [100, 110])

    def test_regimes(self):
        self.assertEqual(aggregate.regime(100, 1000), "perfect scaling")
        self.assertEqual(aggregate.regime(1000, 1000), "diminishing returns")
        self.assertEqual(aggregate.regime(8000, 1000), "maximal data parallelism")


def row(batch, rule, multiplier, steps, val, status="completed", seed=0, optimizer="sgd", schedule="constant",
        samples=None, budget=None):
    return {"budget_steps": budget, "run_id": f"b{batch}-{rule}-x{multiplier}-s{seed}-{schedule}", "optimizer": optimizer, "seed": seed,
            "batch_schedule": schedule, "wall_seconds": None if steps is None else steps / 100,
            "global_batch_size": batch, "lr_rule": rule, "lr_multiplier": multiplier, "lr": 0.1 * multiplier,
            "peak_lr": 0.1 * multiplier * batch / 256, "status": status, "reached_target": steps is not None,
            "steps_to_target": steps, "samples_to_target": None if steps is None else samples or steps * batch,
            "val_accuracy": val, "val_loss": None if val is None else 1 - val, "test_accuracy": val,
            "test_loss": None, "train_accuracy": val, "train_loss": None, "generalization_gap": 0.0,
            "b_simple": 100.0, "b_simple_at_target": 150.0}


class BestLrTest(unittest.TestCase):
    target = spec.Target("val_accuracy", 0.88)

    def best(self, rows):
        return {batch: (cell["lr_rule"], cell["lr_multiplier"])
                for (_, batch), cell in aggregate.choose_best_lrs(rows, self.target).items()}

    def test_fewest_steps_wins_and_ties_go_to_validation(self):
        rows = [row(64, "linear", 0.5, 900, 0.881), row(64, "linear", 1, 700, 0.880), row(64, "linear", 2, 700, 0.885),
                row(64, "linear", 4, None, None, status="diverged")]
        self.assertEqual(self.best(rows), {64: ("linear", 2)})

    def test_without_a_run_at_target_the_best_validation_wins(self):
        rows = [row(4096, "linear", 0.5, None, 0.85), row(4096, "linear", 1, None, 0.87),
                row(4096, "linear", 2, None, None, status="diverged"), row(4096, "sqrt", 1, None, 0.86)]
        self.assertEqual(self.best(rows), {4096: ("linear", 1)})

    def test_a_loss_target_ranks_lower_first(self):
        rows = [row(64, "linear", 1, None, 0.80), row(64, "linear", 2, None, 0.85)]
        best = aggregate.choose_best_lrs(rows, spec.Target("val_loss", 0.1))
        self.assertEqual(best[("sgd", 64)]["lr_multiplier"], 2)  # val_loss 0.15 < 0.2

    def test_seeds_take_the_median_and_a_miss_counts_as_the_budget(self):
        rows = [row(64, "linear", 1, 600, 0.9, seed=0), row(64, "linear", 1, None, 0.87, seed=1, budget=5000),
                row(64, "linear", 1, 700, 0.9, seed=2)]
        [cell] = aggregate.lr_cells(rows, self.target)
        self.assertEqual((cell["steps_to_target"], cell["steps_min"], cell["steps_max"]), (700, 600, 5000))
        self.assertEqual((cell["seeds_reached"], cell["seed_steps"]), (2, [600, 5000, 700]))
        # Most seeds missed: the median is the budget, the target is not reached.
        rows[2] = row(64, "linear", 1, None, 0.86, seed=2, budget=5000)
        [cell] = aggregate.lr_cells(rows, self.target)
        self.assertIsNone(cell["steps_to_target"])
        # A diverged seed counts as the budget too.
        rows[2] = row(64, "linear", 1, None, None, seed=2, status="diverged", budget=5000)
        [cell] = aggregate.lr_cells(rows, self.target)
        self.assertTrue(cell["diverged"])
        self.assertEqual(cell["steps_max"], 5000)

    def test_the_best_lr_is_chosen_on_the_median_not_the_luckiest_seed(self):
        rows = [row(64, "linear", 1, steps, 0.9, seed=seed) for seed, steps in enumerate((100, 1000, 1100))]
        rows += [row(64, "linear", 2, steps, 0.9, seed=seed) for seed, steps in enumerate((500, 520, 540))]
        best = aggregate.choose_best_lrs(rows, self.target)[("sgd", 64)]
        self.assertEqual((best["lr_multiplier"], best["steps_to_target"]), (2, 520))

    def test_schedule_arms_are_compared_apart_from_the_fit(self):
        rows = [row(64, "linear", 1, 600, 0.9), row(256, "linear", 1, 200, 0.9), row(256, "linear", 2, 180, 0.9),
                row(256, "linear", 1, 260, 0.9, schedule="rampup:64:64:4096", samples=40000),
                row(256, "linear", 2, 240, 0.9, schedule="rampup:64:64:4096", samples=38000),
                row(256, "linear", 1, 400, 0.9, schedule="adaptive:64", samples=30000)]
        # The constant batch's best LR and the fit see only constant runs.
        self.assertEqual(self.best(rows), {64: ("linear", 1), 256: ("linear", 2)})
        fit = aggregate.fit_study(rows, self.target)
        self.assertEqual([p["steps_to_target"] for p in fit["fits"]["sgd"]["points"]], [600, 180])
        [entry] = fit["batch_schedules"]
        self.assertEqual(entry["global_batch_size"], 256)
        arms = {arm["batch_schedule"]: (arm["lr_multiplier"], arm["steps_to_target"], arm["samples_to_target"])
                for arm in entry["arms"]}
        self.assertEqual(arms, {"constant": (2, 180, 180 * 256), "rampup:64:64:4096": (2, 240, 38000),
                                "adaptive:64": (1, 400, 30000)})

    def test_failed_and_pending_runs_are_not_candidates(self):
        rows = [row(64, "linear", 1, 100, 0.9, status="failed"), row(64, "linear", 2, 800, 0.9)]
        self.assertEqual(self.best(rows), {64: ("linear", 2)})


def noisy_study(s_min, b_crit, seeds, scatter, rng):
    """Rows of a grid whose best LR's steps follow S(B) with relative scatter
    per seed, and a worse LR beside it."""
    rows = []
    for batch in (16, 64, 256, 1024, 4096):
        for seed in range(seeds):
            steps = s_min * (1 + b_crit / batch) * math.exp(rng.normal(0, scatter))
            rows.append(row(batch, "sqrt", 1, round(steps), 0.9, seed=seed))
            rows.append(row(batch, "sqrt", 2, round(1.5 * steps), 0.9, seed=seed))
    return rows


class BootstrapTest(unittest.TestCase):
    target = spec.Target("val_accuracy", 0.88)

    def test_intervals_cover_the_truth_and_widen_with_scatter(self):
        import numpy as np
        widths = []
        for scatter in (0.02, 0.2):
            rows = noisy_study(100, 500, 5, scatter, np.random.default_rng(1))
            fit = aggregate.fit_study(rows, self.target, resamples=300)["fits"]["sgd"]
            low, high = fit["b_crit_interval"]
            self.assertLessEqual(low, fit["b_crit"])
            self.assertLessEqual(fit["b_crit"], high)
            self.assertLess(low, 500 * (1 + 5 * scatter))
            self.assertGreater(high, 500 / (1 + 5 * scatter))
            s_low, s_high = fit["s_min_interval"]
            self.assertTrue(s_low <= fit["s_min"] <= s_high)
            widths.append(high / low)
            self.assertEqual((fit["seeds"], fit["resamples"]), (5, 300))
            band = fit["band"]
            self.assertTrue(all(lo <= hi for lo, hi in zip(band["low"], band["high"])))
            for point in fit["points"]:
                self.assertEqual(point["best_peak_lr_interval"], [point["best_peak_lr"]] * 2)
                self.assertEqual(point["best_lr_agreement"], 1)
                self.assertLessEqual(point["steps_min"], point["steps_to_target"])
                self.assertLessEqual(point["steps_to_target"], point["steps_max"])
        self.assertGreater(widths[1], 2 * widths[0])

    def test_reproducible_and_none_for_one_seed(self):
        import numpy as np
        rows = noisy_study(100, 500, 3, 0.1, np.random.default_rng(2))
        first = aggregate.fit_study(rows, self.target, resamples=200)["fits"]["sgd"]
        second = aggregate.fit_study(rows, self.target, resamples=200)["fits"]["sgd"]
        self.assertEqual(first["b_crit_interval"], second["b_crit_interval"])
        one = aggregate.fit_study([r for r in rows if r["seed"] == 0], self.target)["fits"]["sgd"]
        self.assertNotIn("b_crit_interval", one)
        self.assertIn("two or more seeds", one["interval_method"])

    def test_the_best_lr_interval_shows_a_close_call(self):
        import numpy as np
        rows = noisy_study(100, 500, 3, 0.01, np.random.default_rng(3))
        # At batch 64, LR x2 is as fast as x1 on two seeds of three.
        for r in rows:
            if r["global_batch_size"] == 64 and r["lr_multiplier"] == 2:
                r["steps_to_target"] = 200 if r["seed"] < 2 else 10000
            if r["global_batch_size"] == 64 and r["lr_multiplier"] == 1:
                r["steps_to_target"] = 210
        point = next(p for p in aggregate.fit_study(rows, self.target, resamples=400)["fits"]["sgd"]["points"]
                     if p["global_batch_size"] == 64)
        self.assertEqual(point["steps_to_target"], 200)
        self.assertLess(point["best_peak_lr_interval"][0], point["best_peak_lr_interval"][1])
        self.assertTrue(0.5 < point["best_lr_agreement"] < 1)

    def test_runs_that_diverged_or_missed_are_counted(self):
        rows = [row(64, "linear", 1, 600, 0.9), row(64, "linear", 2, None, 0.8, budget=900),
                row(64, "linear", 4, None, None, status="diverged"), row(256, "linear", 1, 200, 0.9),
                row(256, "linear", 2, None, None, status="failed")]
        runs = aggregate.fit_study(rows, self.target)["runs"]
        self.assertEqual(runs, {"total": 5, "finished": 4, "diverged": 1, "missed_target": 1, "failed": 1})

    def test_json_safe(self):
        self.assertEqual(aggregate.json_safe({"a": [math.inf, 1.5, {"b": math.nan}]}), {"a": [None, 1.5, {"b": None}]})


class FixedBudgetTest(unittest.TestCase):
    def test_the_lr_is_chosen_on_final_validation_not_on_steps(self):
        rows = [row(64, "linear", 1, 100, 0.88), row(64, "linear", 2, 900, 0.91)]
        best = aggregate.choose_best_lrs(rows, None)[("sgd", 64)]
        self.assertEqual(best["lr_multiplier"], 2)

    def test_the_largest_batch_against_the_best_smaller_one(self):
        rows = []
        for seed in range(3):
            for batch, accuracy in ((64, 0.90), (256, 0.91), (4096, 0.86)):
                r = row(batch, "sqrt", 1, None, accuracy + 0.002 * seed, seed=seed)
                r.update(generalization_gap=0.01 if batch < 4096 else 0.03, sharpness=10.0 if batch < 4096 else 40.0)
                rows.append(r)
        result = aggregate.fixed_budget_study(rows)
        compared = result["optimizers"]["sgd"]["largest_vs_best_smaller"]
        self.assertEqual((compared["largest_batch"], compared["best_smaller_batch"]), (4096, 256))
        self.assertAlmostEqual(compared["test_accuracy_drop"], 0.05)
        self.assertTrue(compared["beyond_seed_spread"])
        self.assertAlmostEqual(compared["gap_change"], 0.02)
        self.assertAlmostEqual(compared["sharpness_ratio"], 4.0)
        point = result["optimizers"]["sgd"]["points"][0]
        self.assertEqual(point["test_accuracy_range"], [0.90, 0.904])
        import report
        [sentence] = report.fixed_budget_sentences(result)
        self.assertIn("large batches generalize worse here", sentence)
        self.assertIn("4.00× as sharp", sentence)
        self.assertIn("5.00 points lower", sentence)

    def study_file(self, text):
        directory = Path(tempfile.mkdtemp())
        (directory / "base.ini").write_text("dataset = synthetic\nlr = 0.1\n")
        (directory / "study.ini").write_text(text.replace("BASE", str(directory / "base.ini")))
        return directory / "study.ini"

    def test_the_mode_in_study_files(self):
        text = "[study]\nbase-config = BASE\nmode = fixed-budget\nbudget = epochs:3\n[grid]\nglobal-batch-sizes = 32\n"
        study = spec.load(self.study_file(text), ROOT)
        self.assertTrue(study.fixed_budget)
        self.assertIsNone(spec.option_value(study.runs[0].args, "--target"))
        self.assertEqual(spec.option_value(study.runs[0].args, "--epochs"), "3")
        for bad, message in (("budget = epochs:3", "budget = steps:30"), ("budget = epochs:3", "budget = epochs:3\nbudget-32 = epochs:4"),
                             ("mode = fixed-budget", "mode = fixed-budget\noptions = --stop-at-target true"),
                             ("mode = fixed-budget", "mode = sometimes")):
            with self.assertRaises(spec.SpecError):
                spec.load(self.study_file(text.replace(bad, message)), ROOT)
        with self.assertRaises(spec.SpecError):  # mode target needs its target
            spec.load(self.study_file(text.replace("mode = fixed-budget\n", "")), ROOT)


class MetricsTest(unittest.TestCase):
    events = [{"event": "train", "step": 5, "noise_scale": None},
              {"event": "train", "step": 10, "noise_scale": 100.0},
              {"event": "eval", "step": 10, "samples_seen": 640, "val_accuracy": 0.85, "train_eval_loss": 0.5},
              {"event": "train", "step": 20, "noise_scale": 300.0},
              {"event": "eval", "step": 20, "samples_seen": 1280, "val_accuracy": 0.881, "train_eval_loss": 0.3},
              {"event": "train", "step": 30, "noise_scale": 1000.0},
              {"event": "eval", "step": 30, "samples_seen": 1920, "val_accuracy": 0.86, "train_eval_loss": 0.2}]

    def test_first_evaluation_meeting_the_target(self):
        self.assertEqual(aggregate.first_eval_meeting(self.events, spec.Target("val_accuracy", 0.88))["step"], 20)
        self.assertIsNone(aggregate.first_eval_meeting(self.events, spec.Target("val_accuracy", 0.9)))
        self.assertEqual(aggregate.first_eval_meeting(self.events, spec.Target("train_loss", 0.25))["step"], 30)

    def test_b_simple_up_to_the_target(self):
        self.assertEqual(aggregate.mean_noise_scale(self.events, 20), 200)
        self.assertEqual(aggregate.mean_noise_scale(self.events), 1400 / 3)
        self.assertIsNone(aggregate.mean_noise_scale(self.events[:1]))
        self.assertEqual(aggregate.last_noise_scale(self.events, 20), 300)
        self.assertEqual(aggregate.last_noise_scale(self.events), 1000)


class SpecTest(unittest.TestCase):
    def test_batch_split(self):
        self.assertEqual(spec.batch_split(16, 1, 128, 2), (8, 2))
        self.assertEqual(spec.batch_split(8192, 1, 512, 2), (512, 16))
        self.assertEqual(spec.batch_split(16, 2, 128, 2), (8, 1))
        self.assertEqual(spec.batch_split(96, 1, 128, 2), (48, 2))
        with self.assertRaises(spec.SpecError):
            spec.batch_split(2, 4, 128, 2)

    def test_the_shipped_study_and_its_quick_variant(self):
        path = ROOT / "configs/studies/fashion_mnist_batch.ini"
        for quick in (False, True):
            study = spec.load(path, ROOT, quick=quick)
            for run in study.runs:
                batch, micro, accum = (int(spec.option_value(run.args, f"--{name}"))
                                       for name in ("global-batch-size", "micro-batch-size", "grad-accum-steps"))
                self.assertEqual(micro * accum * study.ranks, batch)
                self.assertGreaterEqual(accum * study.ranks, 2)  # --noise-scale needs two micro-batches
                self.assertEqual(spec.option_value(run.args, "--target"), str(study.target))
                factor = spec.lr_factor(run.lr_rule, batch, study.base_batch_size)
                self.assertAlmostEqual(run.peak_lr, run.lr * factor)
            self.assertEqual(len({run.spec_hash for run in study.runs}), len(study.runs))

    def study_file(self, text):
        directory = Path(tempfile.mkdtemp())
        (directory / "base.ini").write_text("dataset = synthetic\nlr = 0.1\n")
        (directory / "study.ini").write_text(text.replace("BASE", str(directory / "base.ini")))
        return directory / "study.ini"

    def test_grid_and_hashes(self):
        text = ("[study]\nbase-config = BASE\ntarget = val_accuracy:0.8\nbudget = steps:100\n"
                "[grid]\nglobal-batch-sizes = 32, 64\nlr-rules = linear, sqrt\nlr-multipliers = 0.5, 1\n"
                "lr-multipliers-sqrt = 1\noptimizers = sgd, adamw\nlr-adamw = 0.001\nseeds = 0, 1\n")
        study = spec.load(self.study_file(text), ROOT)
        self.assertEqual(len(study.runs), 2 * 2 * 2 * 3)
        adamw = [run for run in study.runs if run.optimizer == "adamw" and run.lr_rule == "sqrt"][0]
        self.assertEqual((adamw.lr, spec.option_value(adamw.args, "--max-steps")), (0.001, "100"))
        # Checkpoint frequency does not change a run's hash; its budget does.
        other = spec.load(self.study_file(text.replace("[grid]", "checkpoint-every = 7\n[grid]")), ROOT)
        self.assertEqual([r.spec_hash for r in other.runs], [r.spec_hash for r in study.runs])
        other = spec.load(self.study_file(text.replace("steps:100", "steps:101")), ROOT)
        self.assertFalse(set(r.spec_hash for r in other.runs) & set(r.spec_hash for r in study.runs))

    def test_batch_schedules_on_the_grid(self):
        text = ("[study]\nbase-config = BASE\ntarget = val_accuracy:0.8\nbudget = steps:100\nmax-micro-batch = 128\n"
                "[grid]\nglobal-batch-sizes = 64, 256\n")
        plain = spec.load(self.study_file(text), ROOT)
        study = spec.load(self.study_file(text + "batch-schedules-256 = constant, rampup:64:64:1024, adaptive:32\n"), ROOT)
        self.assertEqual([r.run_id for r in study.runs],
                         [r.run_id for r in plain.runs] + ["b00256-linear-x1-sgd-s0-rampup-64-64-1024",
                                                           "b00256-linear-x1-sgd-s0-adaptive-32"])
        # Batch 64 has no schedules: its run stays as it was. Batch 256's arms
        # share one split, the constant one too.
        self.assertEqual(study.runs[0].spec_hash, plain.runs[0].spec_hash)
        constant, rampup, adaptive = study.runs[1:]
        self.assertEqual(spec.option_value(rampup.args, "--batch-schedule"), "rampup:64:64:1024")
        self.assertEqual(rampup.axes()["batch_schedule"], "rampup:64:64:1024")
        # Micro-batches that divide every batch on the schedule, two of them at its smallest.
        for run in (constant, rampup, adaptive):
            self.assertEqual((run.micro_batch_size, run.grad_accum_steps), (16, 16))
        self.assertEqual(spec.schedule_split([64, 64, 256], 1, 128, 2), (32, 8))
        self.assertIsNone(spec.option_value(study.runs[1].args, "--batch-schedule"))
        for bad, mention in (("batch-schedules-256 = rampup:100:64:1024", "batch-schedules-256"),
                             ("batch-schedules-256 = adaptive", "adaptive:START"),
                             ("batch-schedules-256 = adaptive:256", "below the global batch"),
                             ("batch-schedules-128 = constant", "batch-schedules-128"),
                             ("batch-schedules = rampup:64:64", "batch-schedules")):
            with self.assertRaises(spec.SpecError) as caught:
                spec.load(self.study_file(text + bad + "\n"), ROOT)
            self.assertIn(mention, str(caught.exception))

    def test_bad_study_files_name_the_problem(self):
        base = "[study]\nbase-config = BASE\ntarget = val_accuracy:0.8\nbudget = steps:100\n[grid]\nglobal-batch-sizes = 32\n"
        cases = [(base.replace("val_accuracy:0.8", "accuracy:0.8"), "target"),
                 (base.replace("steps:100", "minutes:5"), "budget"),
                 (base + "lr-multiplier = 1\n", "lr-multiplier"),
                 (base.replace("[grid]", "options = --lr 0.2\n[grid]"), "--lr"),
                 (base + "lr-multipliers-cubic = 1\n", "cubic"),
                 (base.replace("budget = steps:100\n", ""), "budget"),
                 (base + "[quick]\nbogus = 1\n", "bogus")]
        for text, mention in cases:
            with self.assertRaises(spec.SpecError) as caught:
                spec.load(self.study_file(text), ROOT, quick="[quick]" in text)
            self.assertIn(mention, str(caught.exception))


if __name__ == "__main__":
    unittest.main()
