#!/usr/bin/python3
"""A stand-in for dtrain (and mpirun) in the driver test, fast and exact.

Steps to reach any target follow S(B) = 100 (1 + 400/B) at the best peak LR,
p*(B) = 0.1 min(B, 400)/256; off it they grow by half for each doubling away,
and a peak above 4 p* diverges at step 5 (exit 3). It evaluates every step
(val_accuracy = 0.9 step / S, capped at 0.9) and logs noise_scale = 400 on
every train record. FAKE_DTRAIN_FAIL and FAKE_DTRAIN_PREEMPT (a substring of
the out dir) make a run fail (exit 1) or stop at a checkpoint (exit 75, then
continue on the next start). Each start appends its out dir to FAKE_DTRAIN_LOG.

As the launcher too: fake_dtrain.py -np N [--bind-to X] [--oversubscribe] DTRAIN ARGS...
"""
import json
import math
import os
import sys
from pathlib import Path

argv = sys.argv[1:]
if argv[:1] == ["-np"]:  # called as mpirun: drop the launcher's options and the dtrain path
    argv = argv[2:]
    while argv[0] in ("--bind-to", "--oversubscribe"):
        argv = argv[2:] if argv[0] == "--bind-to" else argv[1:]
    argv = argv[1:]
options = {argv[i][2:]: argv[i + 1] for i in range(0, len(argv) - 1, 2) if argv[i].startswith("--")}
out = Path(options["out-dir"])
out.mkdir(parents=True, exist_ok=True)
with open(os.environ["FAKE_DTRAIN_LOG"], "a") as log:
    log.write(f"{out.name}\n")

batch = int(options["global-batch-size"])
base = int(options.get("base-batch-size", 256))
factor = {"linear": batch / base, "sqrt": math.sqrt(batch / base), "none": 1}[options["lr-scaling"]]
peak = float(options["lr"]) * factor
best_peak = 0.1 * min(batch, 400) / 256
needed = 100 * (1 + 400 / batch) * (1 + 0.5 * abs(math.log2(peak / best_peak)))
metric, value = options["target"].split(":")
budget = int(options["max-steps"]) if "max-steps" in options else int(options["epochs"]) * 60000 // batch


def finish(status, step, code, reached=None):
    summary = {"status": status, "steps": step, "global_batch_size": batch, "peak_lr": peak,
               "samples_seen": step * batch, "wall_seconds": 0.01,
               "target": {"metric": metric, "value": float(value)},
               "steps_to_target": reached, "samples_to_target": None if reached is None else reached * batch,
               "stopped_at_target": reached is not None, "val_accuracy": None if status == "diverged" else accuracy,
               "val_loss": None if status == "diverged" else 1 - accuracy, "test_accuracy": accuracy,
               "test_loss": 1 - accuracy, "train_eval_accuracy": accuracy, "train_eval_loss": 1 - accuracy,
               "generalization_gap": 0.0, "noise_scale": 400.0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    sys.exit(code)


if any(os.environ.get(name, "\0") in str(out) for name in ("FAKE_DTRAIN_FAIL",)):
    print("fake dtrain: error: injected failure", file=sys.stderr)
    sys.exit(1)
checkpoint = out / "checkpoints" / "step"
start = int(checkpoint.read_text()) if checkpoint.exists() and options.get("resume") == "auto" else 0
stop_at = 10 if os.environ.get("FAKE_DTRAIN_PREEMPT", "\0") in str(out) and not start else None
accuracy = 0.0
with open(out / "metrics.jsonl", "a" if start else "w") as metrics:
    for step in range(start + 1, budget + 1):
        accuracy = min(0.9, 0.9 * step / needed)
        metrics.write(json.dumps({"event": "train", "step": step, "samples_seen": step * batch,
                                  "noise_scale": 400.0}) + "\n")
        if peak > 4 * best_peak and step == 5:
            finish("diverged", step, 3)
        metrics.write(json.dumps({"event": "eval", "step": step, "samples_seen": step * batch,
                                  "val_accuracy": accuracy}) + "\n")
        if accuracy >= float(value):
            finish("completed", step, 0, reached=step)
        if step == stop_at:
            checkpoint.parent.mkdir(exist_ok=True)
            checkpoint.write_text(str(step))
            finish("preempted", step, 75)
finish("completed", budget, 0)
