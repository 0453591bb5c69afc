"""Tokens/s of the GPT (configs/kjv_gpt.ini) at 2 ranks: dtrain against
PyTorch DDP training the same model on the same rows (bench/ddp_gpt.py),
interleaved, repeats' medians. docs/performance.md section 11.

    /usr/bin/python3 bench/gpt_vs_ddp.py [--repeats 3] [--steps 150] [--dtrain build/dtrain]
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
MPIRUN = ["mpirun", "--oversubscribe", "-np", "2"]


def dtrain_rate(binary, steps):
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(MPIRUN + [binary, "--config", os.path.join(ROOT, "configs", "kjv_gpt.ini"),
                                 "--max-steps", str(steps), "--eval-every", "0", "--log-every", str(steps),
                                 "--out-dir", out], env=ENV, check=True, capture_output=True)
        summary = json.load(open(os.path.join(out, "summary.json")))
        return summary["tokens_per_sec"]


def ddp_rate(python, steps):
    out = subprocess.run(MPIRUN + [python, os.path.join(ROOT, "bench", "ddp_gpt.py"), "--steps", str(steps)],
                         env=ENV, check=True, capture_output=True, text=True).stdout
    record = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return record["tokens_per_sec"], record["torch"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--dtrain", default=os.path.join(ROOT, "build", "dtrain"))
    parser.add_argument("--python", default="/usr/bin/python3")
    args = parser.parse_args()
    dtrain, ddp = [], []
    for repeat in range(args.repeats):
        dtrain.append(dtrain_rate(args.dtrain, args.steps))
        rate, version = ddp_rate(args.python, args.steps)
        ddp.append(rate)
        print(f"repeat {repeat + 1}: dtrain {dtrain[-1]:.0f} tokens/s, DDP (torch {version}) {rate:.0f} tokens/s")
    d, p = statistics.median(dtrain), statistics.median(ddp)
    print(f"median: dtrain {d:.0f}, DDP {p:.0f} tokens/s; ratio {d / p:.2f} "
          f"(ranges {min(dtrain):.0f}-{max(dtrain):.0f} and {min(ddp):.0f}-{max(ddp):.0f})")


if __name__ == "__main__":
    main()
