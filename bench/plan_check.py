#!/usr/bin/env python3
"""Validates dtrain plan's predictions (docs/studies.md, "Planning the batch").

  python3 bench/plan_check.py [--build build] [--json runs/bench/plan_check.json]

  1. extrapolation: the steps-to-target fit on the shipped study's batches
     16 to 512 only, its predictions and bootstrap intervals at 1024 to
     8192 against the study's measured steps; the same intervals when the
     fit has every point, to show how much the small batches alone widen them;
  2. step time: `mpirun -np 2 dtrain plan --measure-network` on the study's
     MLP, then real runs at the plan's split for three global batches at 1
     and 2 ranks (one thread per rank, as the plan probed), measured against
     predicted step time;
  3. the cluster-scale example: the GPT of configs/gpt2_small.ini on 8 to
     1024 GPUs of an H100 class, from stated constants (a simulation).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
FIT = os.path.join(ROOT, "docs", "studies", "fit.json")
MLP = ["--config", os.path.join(ROOT, "configs", "studies", "fashion_mnist_base.ini")]
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none"]

# The cluster example's constants (docs/studies.md gives their sources).
# GPT-2 small's shape with byte tokens (configs/gpt2_small.ini: 86.0 M
# parameters, 85 M of them outside the embeddings, context 1024).
N_NON_EMBEDDING = 12 * 12 * 768 ** 2
GPT_FLOPS_PER_SAMPLE = (6 * 86.0e6 + 12 * 12 * 1024 * 768) * 1024  # 6N + 12 L T d per token, x 1024 tokens
H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM dense bf16
MFU = 0.38                # llm.c's GPT-2 (124M) on 8 x H100: 140 ms per 524,288-token step
MICRO_STEP_OVERHEAD = 3e-3  # s per micro-step: ~700 kernels (12 blocks, forward and backward) at ~5 us
# Kaplan et al. (2020): B_crit(L) = B* / L^(1/alpha_B), B* = 2e8 tokens,
# alpha_B = 0.21 (eq. 1.4); L(N, S_min) = (N_c/N)^alpha_N + (S_c/S_min)^alpha_S
# with N_c = 6.5e13, alpha_N = 0.077, S_c = 2.1e3, alpha_S = 0.76 (table 3);
# at a target loss of 3.3 nats (their WebText2 tokens: a stated assumption).
TARGET_LOSS = 3.3
B_CRIT_SEQUENCES = 2e8 / TARGET_LOSS ** (1 / 0.21) / 1024
S_MIN = 2.1e3 / (TARGET_LOSS - (6.5e13 / N_NON_EMBEDDING) ** 0.077) ** (1 / 0.76)
# Per ring phase, alpha s + beta s/byte. NVLink (8 x H100, NVSwitch): busbw
# 466 GB/s at 1 GiB, 13.7 us at 8 B over 2(8-1) phases (NVIDIA's
# dgxc-benchmarking nccl sample). Across nodes, one 400 Gb/s NDR NIC per GPU:
# 46 GB/s per NIC (NVIDIA, nccl-tests#290); about 3.5 us more per phase (4
# nodes: 34.8 us at 16 B, nccl-tests#309).
NVLINK = "9.8e-7,2.15e-12"
IB_400G = "3.5e-6,2.2e-11"

def run(command, **kwargs):
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"plan_check: failed ({result.returncode}): {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return result


def plan(dtrain, flags, out, launcher=()):
    run([*launcher, dtrain, "plan", *flags, "--out", out])
    with open(os.path.join(out, "plan.json")) as f:
        return json.load(f)


def rows_at(plan_json, ranks):
    return {r["global_batch_size"]: r for r in plan_json["rows"] if r["ranks"] == ranks}


def extrapolation(dtrain, work):
    with open(FIT) as f:
        measured = {p["global_batch_size"]: p["steps_to_target"] for p in json.load(f)["fits"]["sgd"]["points"]}
    common = [*MLP, "--fit", FIT, "--max-ranks", "1", "--compute-per-sample", "1e-6", "--batches", "16:8192",
              "--bootstrap", "4000"]
    small = plan(dtrain, [*common, "--fit-batches", "16:512"], os.path.join(work, "small"))
    full = plan(dtrain, common, os.path.join(work, "full"))
    small_rows, full_rows = rows_at(small, 1), rows_at(full, 1)
    print("1. steps to target, fitted on batches 16-512 only (S_min %.1f, B_crit %.0f; all points: %.1f, %.0f)"
          % (small["steps_model"]["s_min"], small["steps_model"]["b_crit"], full["steps_model"]["s_min"],
             full["steps_model"]["b_crit"]))
    print(f"   S_min interval {fmt(small['steps_model']['s_min_interval'])} (all points "
          f"{fmt(full['steps_model']['s_min_interval'])}); B_crit interval {fmt(small['steps_model']['b_crit_interval'])}"
          f" (all points {fmt(full['steps_model']['b_crit_interval'])})")
    print("   batch  measured  predicted  error   95% interval     inside  width   | all points: predicted, interval, inside")
    points = []
    for b in (1024, 2048, 4096, 8192):
        r, a = small_rows[b], full_rows[b]
        lo, hi = r["steps_to_target_interval"]
        error = (r["steps_to_target"] - measured[b]) / measured[b]
        width, width_all = (hi - lo) / r["steps_to_target"], (a["steps_to_target_interval"][1] -
                                                              a["steps_to_target_interval"][0]) / a["steps_to_target"]
        inside = lo <= measured[b] <= hi
        a_lo, a_hi = a["steps_to_target_interval"]
        inside_all = a_lo <= measured[b] <= a_hi
        points.append({"global_batch_size": b, "measured": measured[b], "predicted": r["steps_to_target"],
                       "error": error, "interval": [lo, hi], "inside": inside, "relative_width": width,
                       "all_points_predicted": a["steps_to_target"], "all_points_interval": [a_lo, a_hi],
                       "all_points_inside": inside_all, "relative_width_all_points": width_all})
        print(f"   {b:5d}  {measured[b]:8.0f}  {r['steps_to_target']:9.1f}  {100 * error:+5.0f}%  "
              f"[{lo:6.1f}, {hi:6.1f}]  {'yes' if inside else 'no':>6}  {100 * width:4.0f}%   | "
              f"{a['steps_to_target']:6.1f} [{a_lo:6.1f}, {a_hi:6.1f}] {'yes' if inside_all else 'no'} "
              f"({100 * width_all:.0f}% wide)")
    return {"fit_16_512": small["steps_model"], "fit_all": full["steps_model"], "points": points}


def fmt(pair):
    return "[" + ", ".join("-" if v is None else f"{v:.4g}" for v in pair) + "]"


def step_times(dtrain, work, batches, repeats):
    predicted = plan(dtrain, [*MLP, "--fit", FIT, "--measure-network", "--max-ranks", "2", "--batches", "64:4096",
                              "--max-micro", "512"], os.path.join(work, "measured"), launcher=[*MPIRUN, "-np", "2"])
    print(f"2. step time on this machine: {predicted['compute']['describe']}")
    print(f"   {predicted['network']['describe']}")
    print("   batch ranks split         predicted ms  measured ms  measured/predicted")
    cases = [(b, w, rows_at(predicted, w)[b]) for b in batches for w in (1, 2)]
    times = {(b, w): [] for b, w, _ in cases}
    steps = 250  # 230 steady steps (the first 20 are not counted); --epochs 1000 lets 4096 run them
    for repeat in range(repeats):  # interleaved: the machine's noise hits every case alike
        for b, w, row in cases:
            run_dir = os.path.join(work, f"run_{b}_{w}_{repeat}")
            run([*MPIRUN, "-np", str(w), dtrain, *MLP, "--global-batch-size", str(b), "--micro-batch-size",
                 str(row["micro_batch_size"]), "--threads", "1", "--max-steps", str(steps), "--eval-every", "0",
                 "--log-every", "100000", "--warmup-steps", "0", "--epochs", "1000", "--out-dir", run_dir])
            with open(os.path.join(run_dir, "summary.json")) as f:
                times[(b, w)].append(json.load(f)["steady_ms_per_step"])
    out = []
    for b, w, row in cases:
        measured = sorted(times[(b, w)])[len(times[(b, w)]) // 2]
        ratio = measured / (1e3 * row["step_seconds"])
        out.append({"global_batch_size": b, "ranks": w, "micro_batch_size": row["micro_batch_size"],
                    "grad_accum_steps": row["grad_accum_steps"], "predicted_ms": 1e3 * row["step_seconds"],
                    "predicted_communication_ms": 1e3 * row["exposed_communication_seconds"],
                    "measured_ms": measured, "measured_all_ms": times[(b, w)], "ratio": ratio, "steps": steps})
        print(f"   {b:5d}  {w:4d}  {row['micro_batch_size']:4d} x {row['grad_accum_steps']:3d} x {w}  "
              f"{1e3 * row['step_seconds']:11.2f}  {measured:11.2f}  {ratio:8.2f}")
    return {"plan_compute": predicted["compute"], "plan_network": predicted["network"], "rows": out}


def cluster(dtrain, work):
    per_sample = GPT_FLOPS_PER_SAMPLE / (MFU * H100_BF16_DENSE)
    flags = ["--config", os.path.join(ROOT, "configs", "gpt2_small.ini"), "--precision", "fp32",
             "--steps", f"{S_MIN:.0f}:{B_CRIT_SEQUENCES:.0f}", "--compute-per-sample", f"{per_sample!r},{MICRO_STEP_OVERHEAD!r}", "--update-seconds", "0.001",
             "--max-micro", "32", "--network", NVLINK, "--network-inter", IB_400G, "--ranks-per-node", "8",
             "--comm-overlap", "0", "--max-ranks", "1024", "--batches", "64:65536", "--deadline", "3600"]
    result = plan(dtrain, flags, os.path.join(work, "cluster"))
    print(f"3. GPT at cluster scale (simulated; {MICRO_STEP_OVERHEAD * 1e3:.0f} ms per micro-step besides): S_min {S_MIN:.0f}, B_crit {B_CRIT_SEQUENCES:.0f} sequences; "
          f"{per_sample * 1e3:.3f} ms per sample of 1024 tokens "
          f"({MFU:.0%} MFU of {H100_BF16_DENSE / 1e12:.0f} TFLOPS), {result['gradient_bytes'] / 1e6:.0f} MB of gradients")
    print("   ranks  best batch  split           step ms  comm ms   steps  hours to target  speed-up  GPU-hours")
    best, previous = [], None
    for w in (8, 16, 32, 64, 128, 256, 512, 1024):
        rows = [r for r in result["rows"] if r["ranks"] == w]
        r = min(rows, key=lambda r: r["time_to_target_seconds"])
        speedup = previous["time_to_target_seconds"] / r["time_to_target_seconds"] if previous else float("nan")
        r = dict(r, speedup_over_half_the_ranks=speedup)
        best.append(r)
        previous = r
        print(f"   {w:5d}  {r['global_batch_size']:10d}  {r['micro_batch_size']:3d} x {r['grad_accum_steps']:3d} x {w:4d}"
              f"  {1e3 * r['step_seconds']:7.1f}  {1e3 * r['exposed_communication_seconds']:7.1f}  "
              f"{r['steps_to_target']:6.0f}  {r['time_to_target_seconds'] / 3600:15.3f}  {speedup:8.2f}  "
              f"{r['rank_seconds_to_target'] / 3600:9.1f}")
    # The network constants against nccl-tests' busbw at 1 GiB (the model's
    # hierarchical ring, as src/plan/plan_model.cpp computes it).
    intra, inter = [tuple(map(float, x.split(","))) for x in (NVLINK, IB_400G)]
    def ring(link, n, size):
        return 0 if n < 2 else 2 * (n - 1) * link[0] + 2 * (n - 1) / n * size * link[1]
    busbw = {}
    for w in (8, 32, 64):
        nodes = w // 8
        seconds = ring(intra, 8, 2**30) + ring(inter, nodes, 2**30 / 8)
        busbw[w] = 2 * (w - 1) / w * 2**30 / seconds / 1e9
    print(f"   the model's all-reduce busbw at 1 GiB: {busbw[8]:.0f} GB/s on 8 GPUs (nccl-tests: 466), "
          f"{busbw[32]:.0f} on 32 (358), {busbw[64]:.0f} on 64 (287 to 391)")
    for name in ("fastest", "cheapest"):
        r = result[name]
        print(f"   {name}: batch {r['global_batch_size']} = {r['micro_batch_size']} x {r['grad_accum_steps']} x "
              f"{r['ranks']}, {r['time_to_target_seconds'] / 3600:.3f} h, {r['rank_seconds_to_target'] / 3600:.1f} "
              f"GPU-hours, peak lr {r['peak_lr']:.3g}")
    return {"per_sample_seconds": per_sample, "best_per_ranks": best, "model_busbw_1gib": busbw, "fastest": result["fastest"],
            "cheapest": result["cheapest"], "network": result["network"], "steps_model": result["steps_model"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--json", default=os.path.join(ROOT, "runs", "bench", "plan_check.json"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per measured step time (the median)")
    parser.add_argument("--batches", default="64,512,4096", help="global batches of the step-time check")
    parser.add_argument("--only", default="extrapolation,step_time,cluster")
    args = parser.parse_args()
    dtrain = os.path.join(args.build, "dtrain")
    sections = set(args.only.split(","))
    results = {}
    with tempfile.TemporaryDirectory() as work:
        if "extrapolation" in sections:
            results["extrapolation"] = extrapolation(dtrain, work)
        if "step_time" in sections:
            results["step_time"] = step_times(dtrain, work, [int(b) for b in args.batches.split(",")], args.repeats)
        if "cluster" in sections:
            results["cluster"] = cluster(dtrain, work)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
