#!/usr/bin/python3
"""The sharpness of each batch's best run at the moment it reached the
target, for a finished target study (docs/studies.md, "The two models").

For each chosen batch, the best-LR run of one seed (results.csv's best_lr)
is rerun from its run.json arguments with --export (it stops at the target,
as in the study, and repeats its trajectory bit for bit), then measured with
--measure-sharpness N at the exported weights.

    python3 bench/sharpness_at_target.py STUDY_OUT --config BASE.ini \
        [--batches 64,256,1024,2048,4096] [--seed 0] [--samples 2048] [--dtrain build/dtrain]

Prints a table and writes STUDY_OUT/sharpness_at_target.json.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the study's out dir (results.csv, runs/)")
    parser.add_argument("--config", required=True, help="the study's base config")
    parser.add_argument("--batches", default="64,256,1024,2048,4096")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--dtrain", default=os.path.join(ROOT, "build", "dtrain"))
    arguments = parser.parse_args(argv)
    batches = [int(b) for b in arguments.batches.split(",")]
    best = {}
    with open(os.path.join(arguments.out, "results.csv")) as file:
        for row in csv.DictReader(file):
            if (row["best_lr"] == "True" and row["batch_schedule"] == "constant"
                    and int(row["seed"]) == arguments.seed and int(row["global_batch_size"]) in batches):
                best[int(row["global_batch_size"])] = row
    results = []
    work = tempfile.mkdtemp(prefix="sharpness-at-target-")
    print(f"{'B':>6} {'run':<28} {'steps':>6} {'val acc':>8} {'sharpness':>10} {'iterations':>10} {'seconds':>8}")
    for batch in batches:
        row = best[batch]
        with open(os.path.join(arguments.out, "runs", row["run_id"], "run.json")) as file:
            args = json.load(file)["args"]
        weights = os.path.join(work, f"{row['run_id']}.pt")
        subprocess.run([arguments.dtrain, "--config", arguments.config, *args, "--out-dir",
                        os.path.join(work, row["run_id"]), "--export", weights],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(work, row["run_id"], "summary.json")) as file:
            summary = json.load(file)
        micro = row["micro_batch_size"]
        measured = os.path.join(work, row["run_id"] + "-m")
        subprocess.run([arguments.dtrain, "--config", arguments.config, "--init-from", weights,
                        "--measure-sharpness", str(arguments.samples), "--global-batch-size", micro,
                        "--micro-batch-size", micro, "--out-dir", measured], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with open(os.path.join(measured, "sharpness.json")) as file:
            sharpness = json.load(file)
        results.append({"global_batch_size": batch, "run_id": row["run_id"], "peak_lr": float(row["peak_lr"]),
                        "steps": summary["steps"], "val_accuracy": summary["val_accuracy"],
                        "steps_in_study": row["steps"], "sharpness": sharpness})
        print(f"{batch:6d} {row['run_id']:<28} {summary['steps']:6d} {summary['val_accuracy']:8.4f} "
              f"{sharpness['top_eigenvalue']:10.4g} {sharpness['iterations']:10d} {sharpness['seconds']:8.1f}",
              flush=True)
        if str(summary["steps"]) != row["steps"]:
            print(f"warning: the rerun took {summary['steps']} steps, the study's run {row['steps']}", file=sys.stderr)
    with open(os.path.join(arguments.out, "sharpness_at_target.json"), "w") as file:
        json.dump({"samples": arguments.samples, "seed": arguments.seed, "points": results}, file, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
