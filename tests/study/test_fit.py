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
        samples=None):
    return {"run_id": f"b{batch}-{rule}-x{multiplier}-s{seed}-{schedule}", "optimizer": optimizer, "seed": seed,
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

    def test_seeds_must_all_reach_and_are_averaged(self):
        rows = [row(64, "linear", 1, 600, 0.9, seed=0), row(64, "linear", 1, None, 0.87, seed=1),
                row(64, "linear", 2, 800, 0.9, seed=0), row(64, "linear", 2, 1000, 0.9, seed=1)]
        best = aggregate.choose_best_lrs(rows, self.target)[("sgd", 64)]
        self.assertEqual((best["lr_multiplier"], best["steps_to_target"]), (2, 900))

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
