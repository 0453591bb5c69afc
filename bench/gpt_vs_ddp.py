"""The GPT of configs/kjv_gpt.ini (unpacked, one verse a row, as bench/ddp_gpt.py cuts them), docs/performance.md section 11:
1. tokens/s at 2 ranks: dtrain against PyTorch DDP training the same model on
   the same rows (bench/ddp_gpt.py);
2. world size 1: dtrain's steady ms/step against a bare LibTorch loop of the
   same model, rows and optimizer (dtrain_bench gpt_loop), micro 64.
Interleaved, repeats' medians.

    /usr/bin/python3 bench/gpt_vs_ddp.py [--repeats 3] [--steps 150] [--build build]
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


def dtrain_world1_ms(binary, steps):
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([binary, "--config", os.path.join(ROOT, "configs", "kjv_gpt.ini"), "--pack", "false",
                        "--micro-batch-size", "64",
                        "--grad-accum-steps", "1", "--threads", "1", "--max-steps", str(steps + 20), "--eval-every", "0",
                        "--log-every", str(steps + 20), "--out-dir", out], env=ENV, check=True, capture_output=True)
        return json.load(open(os.path.join(out, "summary.json")))["steady_ms_per_step"]


def bare_loop_ms(bench, steps):
    out = subprocess.run([bench, "gpt_loop", "--config", os.path.join(ROOT, "configs", "kjv_gpt.ini"), "--pack", "false",
                          "--micro", "64", "--steps", str(steps)], env=ENV, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms_per_step"]


def dtrain_rate(binary, steps):
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(MPIRUN + [binary, "--config", os.path.join(ROOT, "configs", "kjv_gpt.ini"), "--pack", "false",
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
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--python", default="/usr/bin/python3")
    args = parser.parse_args()
    binary = os.path.join(args.build, "dtrain")
    dtrain, ddp, world1, bare = [], [], [], []
    for repeat in range(args.repeats):
        world1.append(dtrain_world1_ms(binary, args.steps))
        bare.append(bare_loop_ms(os.path.join(args.build, "dtrain_bench"), args.steps))
        print(f"repeat {repeat + 1}: world 1: dtrain {world1[-1]:.1f} ms/step, bare loop {bare[-1]:.1f} ms/step")
        dtrain.append(dtrain_rate(binary, args.steps))
        rate, version = ddp_rate(args.python, args.steps)
        ddp.append(rate)
        print(f"repeat {repeat + 1}: dtrain {dtrain[-1]:.0f} tokens/s, DDP (torch {version}) {rate:.0f} tokens/s")
    w, b = statistics.median(world1), statistics.median(bare)
    print(f"world 1 median: dtrain {w:.1f}, bare loop {b:.1f} ms/step; bare/dtrain {b / w:.3f} "
          f"(ranges {min(world1):.1f}-{max(world1):.1f} and {min(bare):.1f}-{max(bare):.1f})")
    d, p = statistics.median(dtrain), statistics.median(ddp)
    print(f"median: dtrain {d:.0f}, DDP {p:.0f} tokens/s; ratio {d / p:.2f} "
          f"(ranges {min(dtrain):.0f}-{max(dtrain):.0f} and {min(ddp):.0f}-{max(ddp):.0f})")


if __name__ == "__main__":
    main()
