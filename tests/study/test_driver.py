"""The study driver end to end against fake_dtrain.py (exact and fast): a
failed run, a diverged one and an interrupted one; the rerun that runs only
those two and resumes the interrupted one; a rerun that runs nothing; a grid
that grows by one LR; results.csv, fit.json and report.md.

    /usr/bin/python3 tests/study/test_driver.py
"""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "fake_dtrain.py"
sys.path.insert(0, str(ROOT / "study"))
sys.dont_write_bytecode = True

import aggregate  # noqa: E402

STUDY = """
[study]
base-config = {base}
ranks = 1
target = val_accuracy:0.9
budget = steps:2000
[grid]
global-batch-sizes = 32, 64, 128, 256, 512, 1024, 2048
lr = 0.1
lr-rules = linear, sqrt
lr-multipliers = 0.25, 0.5, 1, 2, 8
lr-multipliers-sqrt = 1
"""


def expected_steps(batch, peak_lrs):
    """The fake's steps-to-target at the best of these peak LRs (None if none reaches in the budget)."""
    best = 0.1 * min(batch, 400) / 256
    steps = [math.ceil(100 * (1 + 400 / batch) * (1 + 0.5 * abs(math.log2(peak / best))))
             for peak in peak_lrs if peak <= 4 * best]
    steps = [s for s in steps if s <= 2000]
    return min(steps) if steps else None


class DriverTest(unittest.TestCase):
    def setUp(self):
        self.work = Path(tempfile.mkdtemp())
        (self.work / "base.ini").write_text("dataset = synthetic\n")
        self.study = self.work / "study.ini"
        self.study.write_text(STUDY.format(base=self.work / "base.ini"))
        self.log = self.work / "starts.log"

    def tearDown(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def drive(self, **env):
        self.log.write_text("")
        result = subprocess.run([sys.executable, str(ROOT / "study/study.py"), str(self.study), "--out",
                                 str(self.work / "out"), "--dtrain", str(FAKE), "--mpirun", f"{FAKE}"],
                                capture_output=True, text=True,
                                env=dict(os.environ, FAKE_DTRAIN_LOG=str(self.log), **env))
        return result, self.log.read_text().split()

    def rows(self):
        with open(self.work / "out/results.csv") as file:
            return {row["run_id"]: row for row in csv.DictReader(file)}

    def test_the_driver(self):
        first, started = self.drive(FAKE_DTRAIN_FAIL="b00064-linear-x2-", FAKE_DTRAIN_PREEMPT="b00128-linear-x1-")
        self.assertEqual(first.returncode, 1, first.stdout + first.stderr)
        self.assertIn("1 run(s) failed: b00064-linear-x2-sgd-s0", first.stderr)
        self.assertEqual(len(started), 42)
        rows = self.rows()
        self.assertEqual(len(rows), 42)
        self.assertEqual((rows["b00064-linear-x2-sgd-s0"]["status"], rows["b00064-linear-x2-sgd-s0"]["exit_code"]),
                         ("failed", "1"))
        self.assertEqual(rows["b00128-linear-x1-sgd-s0"]["status"], "preempted")
        self.assertEqual({rows[f"b{b:05d}-linear-x8-sgd-s0"]["status"] for b in (32, 2048)}, {"diverged"})
        self.assertEqual(rows["b00032-linear-x0.25-sgd-s0"]["reached_target"], "False")

        second, started = self.drive()
        self.assertEqual(second.returncode, 0, second.stdout + second.stderr)
        self.assertEqual(sorted(started), ["b00064-linear-x2-sgd-s0", "b00128-linear-x1-sgd-s0"])
        self.assertEqual(second.stdout.count(" skip "), 40)
        resumed = [json.loads(line) for line in
                   (self.work / "out/runs/b00128-linear-x1-sgd-s0/metrics.jsonl").read_text().splitlines()]
        self.assertEqual([event["step"] for event in resumed if event["event"] == "eval"][:12], list(range(1, 13)))

        rows = self.rows()
        self.assertEqual({row["status"] for row in rows.values()}, {"completed", "diverged"})
        fit = json.loads((self.work / "out/fit.json").read_text())["fits"]["sgd"]
        measured = {}
        for batch in (32, 64, 128, 256, 512, 1024, 2048):
            mine = [row for row in rows.values() if int(row["global_batch_size"]) == batch]
            best = [row for row in mine if row["best_lr"] == "True"]
            self.assertEqual(len(best), 1)
            measured[batch] = expected_steps(batch, [float(row["peak_lr"]) for row in mine])
            self.assertEqual(int(best[0]["steps_to_target"]), measured[batch])
            self.assertEqual(float(best[0]["b_simple"]), 400)
        reference = aggregate.fit_steps_to_target(list(measured), list(measured.values()))
        self.assertAlmostEqual(fit["b_crit"], reference["b_crit"])
        self.assertAlmostEqual(fit["s_min"], reference["s_min"])
        self.assertLess(abs(fit["b_crit"] / 400 - 1), 0.25)
        self.assertEqual(fit["mean_b_simple"], 400)
        report = (self.work / "out/report.md").read_text()
        for png in ("steps_to_target", "best_lr", "generalization", "noise_scale", "heatmap_sgd"):
            self.assertIn(f"(plots/{png}.png)", report)
            self.assertTrue((self.work / f"out/plots/{png}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n"))

        third, started = self.drive()
        self.assertEqual((third.returncode, started), (0, []), third.stdout + third.stderr)
        self.assertIn("ran 0 run(s); skipped 42", third.stdout)

        # One more LR: only its runs start.
        self.study.write_text(self.study.read_text().replace("0.25, 0.5, 1, 2, 8", "0.25, 0.5, 1, 2, 4, 8"))
        fourth, started = self.drive()
        self.assertEqual(fourth.returncode, 0, fourth.stdout + fourth.stderr)
        self.assertEqual(sorted(started), sorted(f"b{b:05d}-linear-x4-sgd-s0" for b in measured))


if __name__ == "__main__":
    unittest.main()
