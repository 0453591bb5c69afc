#!/usr/bin/env python3
"""dtrain's benchmarks, side by side in one run (launch/bench.sh runs this).

Every comparison interleaves its variants within each repetition, so the
noise of a shared machine hits all of them alike, and reports the median of
the repetitions. Prints tables and writes everything to a JSON file.

  1. all-reduce path vs raw MPI_Allreduce, 1 to 64 MiB
  2. end to end vs PyTorch DDP (Gloo) and vs the ceiling of two independent
     single-process copies running at once, accumulation 1 and 8
  3. trainer overhead: dtrain at world size 1 vs a bare LibTorch loop
  4. bytes and calls per optimizer step from the communicator's counters
  5. a ~100 MB-gradient model: overlapped buckets vs one flat all-reduce
  6. --threads auto vs --threads 1 for one rank on two CPUs (taskset -c 0,1)
  7. a checkpoint of ~96 MB of parameters plus momentum vs cp of the same files
  8. per-step costs of the stop agreement and the non-finite check, 2 ranks
 14. ZeRO-1 (--shard-optimizer-state) against unsharded, KJV GPT, 2 ranks
 15. --activation-checkpointing blocks against none, GPTs of 2 to 16 layers:
     activation bytes per sample (measured and by formula), step time
 16. the language model on two cores: configs/kjv_gpt.ini against a plain
     PyTorch loop of the same recipe (validation bits per byte, wall time)
 17. --precision on the CPU: fp32 against bf16-mixed (step time, activations)

--only overhead,threads runs just those sections (names: allreduce, e2e,
overhead, traffic, big, threads, checkpoint, guards, noise, gpt, memory,
memtable, zero1, checkpointing; lm and precision run only when named).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
DATA = ["--dataset", "synthetic", "--synthetic-train-samples", "65536", "--synthetic-test-samples", "256",
        "--threads", "1", "--log-every", "100000"]
MLP = DATA + ["--hidden", "1024,1024", "--micro-batch-size", "64"]


def run(command, **kwargs):
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"bench: failed ({result.returncode}): {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return result


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON line in: {text[-500:]}")


def dtrain_rate(binary, ranks, extra, steps, model=MLP):
    """Samples/s of a dtrain run (training steps only), from summary.json."""
    with tempfile.TemporaryDirectory() as out:
        command = ([] if ranks == 0 else ["mpirun", "-np", str(ranks)]) + \
            [binary] + model + ["--max-steps", str(steps), "--out-dir", out] + extra
        run(command)
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)["samples_per_sec"]


def ceiling_rate(binary, extra, steps):
    """Two independent world-size-1 dtrain processes at once: summed samples/s."""
    with tempfile.TemporaryDirectory() as out:
        processes = [subprocess.Popen([binary] + MLP + ["--max-steps", str(steps), "--out-dir", f"{out}/{i}"] + extra,
                                      env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
        for p in processes:
            if p.wait() != 0:
                sys.exit(f"bench: ceiling run failed: {p.stderr.read().decode()}")
        return sum(json.load(open(f"{out}/{i}/summary.json"))["samples_per_sec"] for i in range(2))


def ddp_rate(python, accum, steps):
    command = ["mpirun", "-np", "2", python, os.path.join(ROOT, "bench", "ddp_mlp.py"),
               "--accum", str(accum), "--steps", str(steps)]
    record = last_json(run(command).stdout)
    return record["samples_per_sec"], record["torch"]


def median_of(samples):
    return {key: statistics.median(values) for key, values in samples.items()}


def table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--torch2-build", default=os.path.join(ROOT, "build-torch2"))
    parser.add_argument("--torch2-python", default=os.path.expanduser("~/.cache/dtrain/torch2-venv/bin/python"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per end-to-end run")
    parser.add_argument("--json", default=os.path.join(ROOT, "runs", "bench", "bench.json"))
    parser.add_argument("--only", default="allreduce,e2e,overhead,traffic,big,threads,checkpoint,guards,noise,gpt,"
                        "memory,memtable,zero1,checkpointing",
                        help="comma-separated sections to run (lm and precision only when named: lm takes 10 minutes)")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    dtrain = os.path.join(args.build, "dtrain")
    bench = os.path.join(args.build, "dtrain_bench")
    results = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "repeats": args.repeats}

    # 1. All-reduce path vs raw MPI.
    if "allreduce" in sections:
        allreduce(args, bench, results)
    if "e2e" in sections:
        end_to_end(args, dtrain, results)
    if "overhead" in sections:
        overhead(args, dtrain, bench, results)
    if "traffic" in sections:
        traffic(bench, results)
    if "big" in sections:
        big_model(args, dtrain, results)
    if "threads" in sections:
        auto_threads(args, dtrain, results)
    if "checkpoint" in sections:
        checkpoint(args, bench, results)
    if "guards" in sections:
        guards(args, dtrain, results)
    if "noise" in sections:
        noise_scale(args, dtrain, results)
    if "gpt" in sections:
        gpt(args, results)
    if "memory" in sections:
        memory_cost(args, dtrain, results)
    if "memtable" in sections:
        memory_table(dtrain, results)
    if "zero1" in sections:
        sharded_step(args, dtrain, results)
    if "checkpointing" in sections:
        activation_checkpointing(args, dtrain, results)
    if "lm" in sections:
        language_model(args, dtrain, bench, results)
    if "precision" in sections:
        precision_cpu(args, dtrain, results)

    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.json}")


def allreduce(args, bench, results):
    per_size = {}
    for _ in range(args.repeats):
        record = last_json(run(["mpirun", "-np", "2", bench, "allreduce", "--mb", "1,4,16,64", "--iters", "10"]).stdout)
        for row in record["rows"]:
            for key in ("raw_mpi_s", "communicator_s", "reducer_s"):
                per_size.setdefault(row["mb"], {}).setdefault(key, []).append(row[key])
    rows = []
    results["allreduce"] = []
    for mb, samples in sorted(per_size.items()):
        m = median_of(samples)
        gbps = {k: mb / 1024 / v for k, v in m.items()}
        results["allreduce"].append({"mb": mb, **m})
        rows.append([mb, f"{gbps['raw_mpi_s']:.2f}", f"{gbps['communicator_s']:.2f}", f"{gbps['reducer_s']:.2f}",
                     f"{m['raw_mpi_s'] / m['communicator_s']:.2f}", f"{m['raw_mpi_s'] / m['reducer_s']:.2f}"])
    table("1. all-reduce, 2 ranks (GiB/s of buffer; ratio = our throughput / raw MPI's, target >= 0.9)",
          ["MiB", "raw MPI", "communicator", "reducer", "comm/raw", "reducer/raw"], rows)


def end_to_end(args, dtrain, results):
    # 2. End to end, interleaved.
    have_torch2 = os.path.exists(os.path.join(args.torch2_build, "dtrain")) and os.path.exists(args.torch2_python)
    samples, versions = {}, {}
    for _ in range(args.repeats):
        for accum in (1, 8):
            steps = args.steps if accum == 1 else max(args.steps // 8, 12)
            extra = ["--grad-accum-steps", str(accum)]
            samples.setdefault(f"dtrain_a{accum}", []).append(dtrain_rate(dtrain, 2, extra, steps))
            samples.setdefault(f"ceiling_a{accum}", []).append(ceiling_rate(dtrain, extra, steps))
            rate, versions["ddp_debian"] = ddp_rate("/usr/bin/python3", accum, steps)
            samples.setdefault(f"ddp_debian_a{accum}", []).append(rate)
            if have_torch2:
                d2 = os.path.join(args.torch2_build, "dtrain")
                samples.setdefault(f"dtrain2_a{accum}", []).append(dtrain_rate(d2, 2, extra, steps))
                samples.setdefault(f"ceiling2_a{accum}", []).append(ceiling_rate(d2, extra, steps))
                rate, versions["ddp_pypi"] = ddp_rate(args.torch2_python, accum, steps)
                samples.setdefault(f"ddp_pypi_a{accum}", []).append(rate)
    m = median_of(samples)
    results["end_to_end"] = m
    results["torch_versions"] = versions
    rows = []
    for accum in (1, 8):
        rows.append([f"LibTorch 1.13 (Debian)", accum, f"{m[f'dtrain_a{accum}']:.0f}", f"{m[f'ddp_debian_a{accum}']:.0f}",
                     f"{m[f'dtrain_a{accum}'] / m[f'ddp_debian_a{accum}']:.2f}", f"{m[f'ceiling_a{accum}']:.0f}",
                     f"{m[f'dtrain_a{accum}'] / m[f'ceiling_a{accum}']:.2f}"])
        if have_torch2:
            rows.append([f"LibTorch {versions['ddp_pypi']}", accum, f"{m[f'dtrain2_a{accum}']:.0f}",
                         f"{m[f'ddp_pypi_a{accum}']:.0f}", f"{m[f'dtrain2_a{accum}'] / m[f'ddp_pypi_a{accum}']:.2f}",
                         f"{m[f'ceiling2_a{accum}']:.0f}", f"{m[f'dtrain2_a{accum}'] / m[f'ceiling2_a{accum}']:.2f}"])
    table("2. MLP 784-1024-1024-10, micro 64, SGD momentum, 2 ranks x 1 thread (samples/s; targets: "
          "dtrain/DDP >= 1.5, dtrain/ceiling >= 0.85 at accum 1 and >= 0.95 at accum 8)",
          ["torch", "accum", "dtrain", "DDP", "dtrain/DDP", "ceiling", "dtrain/ceiling"], rows)


# The world-1 pair of the options issue: dtrain and a bare LibTorch loop of
# the same network, Fashion-MNIST and SGD, steady ms/step (first 20 steps
# untimed, no evaluation or logging in the timed part).
OVERHEAD = ["--model", "mlp", "--hidden", "1024,1024", "--micro-batch-size", "64", "--optimizer", "sgd",
            "--momentum", "0.9", "--lr", "0.01", "--lr-scaling", "none", "--threads", "1", "--log-every", "100000"]


def dtrain_summary(binary, flags, launcher=()):
    with tempfile.TemporaryDirectory() as out:
        run(list(launcher) + [binary] + flags + ["--out-dir", out])
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)


def overhead(args, dtrain, bench, results):
    repeats = max(args.repeats, 5)
    steps = ["--max-steps", str(args.steps + 20)]
    variants = [
        ("dtrain_w1", lambda: dtrain_summary(dtrain, OVERHEAD + steps)["steady_ms_per_step"]),
        ("dtrain_w1_nocheck",
         lambda: dtrain_summary(dtrain, OVERHEAD + steps + ["--on-nonfinite", "ignore"])["steady_ms_per_step"]),
        ("bare_loop", lambda: last_json(run([bench, "loop", "--steps", str(args.steps)]).stdout)["ms_per_step"])]
    samples = {name: [] for name, _ in variants}
    for repeat in range(repeats):  # rotating order: the machine drifts
        for name, measure in variants[repeat % 3:] + variants[:repeat % 3]:
            samples[name].append(measure())
    m = median_of(samples)
    ratios = [d / b for d, b in zip(samples["dtrain_w1_nocheck"], samples["bare_loop"])]
    default_ratios = [d / b for d, b in zip(samples["dtrain_w1"], samples["bare_loop"])]
    results["overhead"] = {"medians_ms": m, "samples_ms": samples, "repeats": repeats}
    table(f"3. trainer overhead at world size 1, Fashion-MNIST MLP 784-1024-1024-10, micro 64, 1 thread "
          f"(steady ms/step, median of {repeats} interleaved runs; target: every default on, bare / dtrain >= 0.99)",
          ["dtrain w=1 (defaults)", "--on-nonfinite ignore", "bare loop", "ignore/bare", "pairwise range",
           "default/bare", "pairwise range", "bare/default"],
          [[f"{m['dtrain_w1']:.3f}", f"{m['dtrain_w1_nocheck']:.3f}", f"{m['bare_loop']:.3f}",
            f"{m['dtrain_w1_nocheck'] / m['bare_loop']:.3f}", f"{min(ratios):.3f}-{max(ratios):.3f}",
            f"{m['dtrain_w1'] / m['bare_loop']:.3f}", f"{min(default_ratios):.3f}-{max(default_ratios):.3f}",
            f"{m['bare_loop'] / m['dtrain_w1']:.3f}"]])


def auto_threads(args, dtrain, results):
    """One rank on two CPUs (taskset -c 0,1), the default job: --threads auto vs 1."""
    repeats = max(args.repeats, 5)
    env_without_omp = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
    flags = ["--config", os.path.join(ROOT, "configs", "fashion_mnist_mlp.ini"), "--max-steps", str(args.steps * 2),
             "--log-every", "100000"]
    samples = {"auto": [], "one": []}
    for repeat in range(repeats):
        pair = [("auto", ["--threads", "auto"]), ("one", ["--threads", "1"])]
        for name, extra in (pair if repeat % 2 == 0 else reversed(pair)):
            with tempfile.TemporaryDirectory() as out:
                result = subprocess.run(["taskset", "-c", "0,1", dtrain] + flags + extra + ["--out-dir", out],
                                        env=env_without_omp, capture_output=True, text=True)
                if result.returncode != 0:
                    sys.exit(f"bench: failed: {result.stderr}")
                samples[name].append(json.load(open(os.path.join(out, "summary.json")))["samples_per_sec"])
    m = median_of(samples)
    ratios = [a / o for a, o in zip(samples["auto"], samples["one"])]
    results["auto_threads"] = {"medians": m, "samples": samples, "repeats": repeats}
    table(f"6. one rank under taskset -c 0,1, default job (samples/s, median of {repeats} interleaved runs)",
          ["--threads auto", "--threads 1", "auto/1", "pairwise range"],
          [[f"{m['auto']:.0f}", f"{m['one']:.0f}", f"{m['auto'] / m['one']:.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}"]])


def traffic(bench, results):
    # 4. Traffic.
    record = last_json(run(["mpirun", "-np", "2", bench, "traffic", "--accum", "1,8"]).stdout)
    results["traffic"] = record["rows"]
    table("4. traffic per optimizer step (communicator counters)",
          ["accum", "bytes/step", "parameter bytes", "calls/step", "buckets"],
          [[r["accum"], r["bytes_per_step"], r["parameter_bytes"], r["calls_per_step"], r["buckets"]]
           for r in record["rows"]])



def big_model(args, dtrain, results):
    # 5. ~100 MB of gradients: buckets with overlap vs one flat all-reduce after backward.
    big = DATA + ["--hidden", "4096,4096,1024", "--micro-batch-size", "32"]
    variants = {"buckets 25 MiB, overlap": ["--bucket-cap-mb", "25", "--overlap", "true"],
                "buckets 25 MiB, after backward": ["--bucket-cap-mb", "25", "--overlap", "false"],
                "one flat bucket, after backward": ["--bucket-cap-mb", "1000", "--overlap", "false"]}
    big_samples = {}
    for _ in range(args.repeats):
        for name, flags in variants.items():
            big_samples.setdefault(name, []).append(dtrain_rate(dtrain, 2, flags, 12, model=big))
    mb = median_of(big_samples)
    results["big_model"] = mb
    flat = mb["one flat bucket, after backward"]
    table("5. MLP 784-4096-4096-1024-10 (97 MB of gradients), micro 32, 2 ranks (samples/s)",
          ["variant", "samples/s", "vs flat"], [[k, f"{v:.1f}", f"{v / flat:.2f}"] for k, v in mb.items()])




def checkpoint(args, bench, results):
    """write_checkpoint vs cp -r of the written files (with and without sync), on the same disk."""
    repeats = max(args.repeats, 5)
    out = os.path.join(ROOT, "runs", "bench", "checkpoint")
    record = last_json(run([bench, "checkpoint", "--repeats", str(repeats), "--dir", out]).stdout)
    results["checkpoint"] = record
    table(f"7. checkpoint of an MLP 784-5000-4000-10 ({record['parameter_bytes'] / 1e6:.0f} MB of parameters) "
          f"plus SGD momentum, {record['checkpoint_bytes'] / 1e6:.0f} MB on disk (s, median of {repeats} interleaved; "
          f"target: write <= 2x cp)",
          ["write_checkpoint", "cp -r", "cp -r + sync", "write/cp", "write/(cp+sync)", "pickle_save", "SHA-256",
           "XXH3-128", "CRC-32 zlib", "CRC-32 libdeflate"],
          [[f"{record['write_s']:.3f}", f"{record['cp_s']:.3f}", f"{record['cp_sync_s']:.3f}",
            f"{record['write_s'] / record['cp_s']:.2f}", f"{record['write_s'] / record['cp_sync_s']:.2f}",
            f"{record['serialize_s']:.3f}", f"{record['sha256_s']:.3f}", f"{record['xxh3_s']:.3f}",
            f"{record['crc32_zlib_s']:.3f}", f"{record['crc32_libdeflate_s']:.3f}"]])


def guards(args, dtrain, results):
    """The default job at 2 ranks: the per-step stop agreement and non-finite check, against the step."""
    repeats = max(args.repeats, 3)
    flags = ["--config", os.path.join(ROOT, "configs", "fashion_mnist_mlp.ini"), "--max-steps", str(args.steps * 3),
             "--log-every", "100000"]
    rows, samples = [], []
    for repeat in range(repeats):
        summary = dtrain_summary(dtrain, flags, launcher=["mpirun", "-np", "2"])
        samples.append({k: summary[k] for k in ("steady_ms_per_step", "agreement_ms_per_step",
                                                  "nonfinite_check_ms_per_step")})
    step = statistics.median(s["steady_ms_per_step"] for s in samples)
    agreement = statistics.median(s["agreement_ms_per_step"] for s in samples)
    check = statistics.median(s["nonfinite_check_ms_per_step"] for s in samples)
    results["guards"] = {"samples": samples, "repeats": repeats}
    table(f"8. per-step guards, default job at 2 ranks ({args.steps * 3} steps, ms/step, median of {repeats} runs; "
          f"target: agreement <= 1% of the step)",
          ["step", "stop agreement", "agreement/step", "non-finite check", "check/step"],
          [[f"{step:.3f}", f"{agreement:.4f}", f"{100 * agreement / step:.2f}%", f"{check:.4f}",
            f"{100 * check / step:.2f}%"]])


def noise_scale(args, dtrain, results):
    """The default job at 2 ranks with and without --noise-scale, interleaved: its cost per step."""
    repeats = max(args.repeats, 3)
    base = ["--config", os.path.join(ROOT, "configs", "fashion_mnist_mlp.ini"), "--max-steps", str(args.steps * 3),
            "--log-every", "50"]
    rows, record = [], {}
    # Accumulation 1: one norm per bucket; accumulation 2: also a copy of the gradients per micro-step.
    for label, split in (("micro 128 x accum 1", []), ("micro 64 x accum 2", ["--micro-batch-size", "64",
                                                                             "--global-batch-size", "256"])):
        samples = {"off": [], "on": [], "observe": []}
        for repeat in range(repeats):
            order = [False, True] if repeat % 2 == 0 else [True, False]
            for on in order:
                summary = dtrain_summary(dtrain, base + split + (["--noise-scale", "true"] if on else []),
                                         launcher=["mpirun", "-np", "2"])
                samples["on" if on else "off"].append(summary["steady_ms_per_step"])
                if on:
                    samples["observe"].append(summary["noise_scale_ms_per_step"])
        off, on = statistics.median(samples["off"]), statistics.median(samples["on"])
        ratios = [b / a for a, b in zip(samples["off"], samples["on"])]
        record[label] = samples
        rows.append([label, f"{off:.3f}", f"{on:.3f}", f"{on / off:.3f}", f"{min(ratios):.3f}-{max(ratios):.3f}",
                     f"{statistics.median(samples['observe']):.3f}"])
    results["noise_scale"] = {"samples_ms": record, "repeats": repeats}
    table(f"9. gradient noise scale cost, default job at 2 ranks ({args.steps * 3} steps, steady ms/step, median of "
          f"{repeats} interleaved runs)",
          ["split", "off", "--noise-scale", "on/off", "pairwise range", "of which all-reduce + estimate"], rows)


def gpt(args, results):
    """Section 11: the GPT against PyTorch DDP at 2 ranks and against a bare loop at world size 1
    (bench/gpt_vs_ddp.py, which needs Debian's python3-torch)."""
    print("\n11. the GPT of configs/kjv_gpt.ini: dtrain against PyTorch DDP at 2 ranks (tokens/s, target >= 1.2x) and "
          "against a bare LibTorch loop at world size 1 (target >= 0.97)")
    out = run(["/usr/bin/python3", os.path.join(ROOT, "bench", "gpt_vs_ddp.py"), "--repeats", str(args.repeats),
               "--build", args.build]).stdout
    print(out.rstrip())
    results["gpt"] = out.strip().splitlines()[-2:]


def memory_cost(args, dtrain, results):
    """The default job at 2 ranks: LibTorch's CPU allocator bare, behind the counting allocator, and with a
    --memory-budget too (the budget check and the per-step out-of-memory agreement), interleaved."""
    repeats = max(args.repeats, 3)
    base = ["--config", os.path.join(ROOT, "configs", "fashion_mnist_mlp.ini"), "--max-steps", str(args.steps * 3),
            "--log-every", "100000"]
    variants = [("bare", {"DTRAIN_MEMORY_ACCOUNTING": "0"}, []), ("counted", {}, []),
                ("budget", {}, ["--memory-budget", "64GiB"])]
    samples = {name: [] for name, _, _ in variants}
    for repeat in range(repeats):
        for name, env, flags in variants[repeat % 3:] + variants[:repeat % 3]:
            launcher = ["env"] + [f"{k}={v}" for k, v in env.items()] + ["mpirun", "-np", "2"]
            if env:
                launcher += ["-x", "DTRAIN_MEMORY_ACCOUNTING"]
            samples[name].append(dtrain_summary(dtrain, base + flags, launcher=launcher)["steady_ms_per_step"])
    m = median_of(samples)
    results["memory_cost"] = {"samples_ms": samples, "repeats": repeats}
    table(f"12. cost of memory accounting, default job at 2 ranks ({args.steps * 3} steps, steady ms/step, median of "
          f"{repeats} interleaved runs)",
          ["LibTorch allocator", "counted", "counted/bare", "+ --memory-budget", "budget/bare"],
          [[f"{m['bare']:.3f}", f"{m['counted']:.3f}", f"{m['counted'] / m['bare']:.3f}", f"{m['budget']:.3f}",
            f"{m['budget'] / m['bare']:.3f}"]])


def memory_table(dtrain, results):
    """Peak memory of one rank's training step against the micro-batch (accumulation 1), and at the smallest
    micro-batch with accumulation 4: the default MLP on Fashion-MNIST and the KJV GPT, 1 rank, 3 steps each."""
    jobs = [("MLP 784-512-256-10, Fashion-MNIST", ["--config", os.path.join(ROOT, "configs", "fashion_mnist_mlp.ini")],
             [32, 64, 128, 256, 512]),
            ("GPT 4x128, block 64, KJV", ["--config", os.path.join(ROOT, "configs", "kjv_gpt.ini")], [8, 16, 32, 64, 128])]
    record = {}
    for title, flags, micros in jobs:
        rows, previous = [], None
        splits = [(m, 1) for m in micros] + [(micros[0], 4)]
        for micro, accum in splits:
            summary = dtrain_summary(dtrain, flags + ["--micro-batch-size", str(micro), "--grad-accum-steps", str(accum),
                                                      "--global-batch-size", str(micro * accum), "--max-steps", "3",
                                                      "--eval-every", "0", "--log-every", "1"])
            mem = summary["memory"]
            record[f"{title} {micro}x{accum}"] = mem
            mib = lambda b: f"{b / 2**20:.1f}"
            # Activations are a fixed part (backward's gradient of each parameter before it is added into its
            # bucket) plus a part per sample: the slope between consecutive micro-batches shows the second.
            slope = "" if previous is None or accum != 1 else \
                f"{(mem['activations_bytes'] - previous[1]) / (micro - previous[0]) / 1024:.1f}"
            if accum == 1:
                previous = (micro, mem["activations_bytes"])
            rows.append([f"{micro} x {accum}", mib(mem["parameters_bytes"]), mib(mem["gradients_bytes"]),
                         mib(mem["optimizer_state_bytes"]), mib(mem["other_bytes"]), mib(mem["activations_bytes"]),
                         slope, mib(mem["peak_bytes"])])
        table(f"13. peak memory of a step, {title} (MiB, rank 0 of 1)",
              ["micro x accum", "parameters", "gradients", "optimizer", "data+other", "activations",
               "KiB per added sample", "peak"], rows)
    results["memory_table"] = record


def sharded_step(args, dtrain, results):
    """The KJV GPT (configs/kjv_gpt.ini, AdamW) at 2 ranks, --shard-optimizer-state true against false,
    interleaved: the step-time ratio, the all-gather's share and the optimizer state per rank."""
    repeats = max(args.repeats, 4)
    flags = ["--config", os.path.join(ROOT, "configs", "kjv_gpt.ini"), "--max-steps", "60", "--eval-every", "0",
             "--validation-size", "0", "--log-every", "100000"]
    samples = {"false": [], "true": []}
    gather, state = [], {}
    for repeat in range(repeats):  # alternating order: the machine drifts
        for mode in (("false", "true") if repeat % 2 == 0 else ("true", "false")):
            summary = dtrain_summary(dtrain, flags + ["--shard-optimizer-state", mode], launcher=["mpirun", "-np", "2"])
            samples[mode].append(summary["steady_ms_per_step"])
            state[mode] = summary["memory"]["optimizer_state_bytes"]
            if mode == "true":
                gather.append(1000 * summary["parameter_all_gather_seconds"] / summary["steps"])
    m = {mode: statistics.median(values) for mode, values in samples.items()}
    ratios = [w / s for w, s in zip(samples["false"], samples["true"])]
    results["zero1"] = {"samples_ms": samples, "all_gather_ms_per_step": gather, "optimizer_state_bytes": state}
    table(f"14. ZeRO-1 at 2 ranks, KJV GPT 4x128 AdamW (steady ms/step, median of {repeats} alternating runs; "
          f"goal: unsharded/sharded >= 0.97)",
          ["unsharded", "sharded", "unsharded/sharded", "pairwise range", "all-gather ms/step",
           "optimizer state per rank"],
          [[f"{m['false']:.2f}", f"{m['true']:.2f}", f"{m['false'] / m['true']:.3f}",
            f"{min(ratios):.3f}-{max(ratios):.3f}", f"{statistics.median(gather):.2f}",
            f"{state['false'] / 2**20:.2f} -> {state['true'] / 2**20:.2f} MiB"]])


def activation_checkpointing(args, dtrain, results):
    """Section 15: --activation-checkpointing blocks against none for the GPT of configs/kjv_gpt.ini (width 128,
    4 heads, block 64) at 2, 4, 8 and 16 layers, 1 rank, --threads 1, side by side.

    Activation bytes per sample: the slope of summary.json's activations between micro-batches 8 and 16 (which
    removes the fixed part, backward's per-parameter gradients). The formula for blocks: L block inputs
    (T x n_embd floats each) + one block's activations + the head, where a block's and the head's bytes come from
    none's measurements (none = L x block + head, fitted over the four L). Step time: steady ms/step at micro 16
    (the first 20 steps untimed), median of the repeats, the two modes interleaved within each repeat."""
    layers, micros, block_size, n_embd = [2, 4, 8, 16], (8, 16), 64, 128
    repeats = max(args.repeats, 3)
    timed_steps = 20 + 15
    base = ["--config", os.path.join(ROOT, "configs", "kjv_gpt.ini"), "--threads", "1", "--eval-every", "0",
            "--log-every", "100000", "--validation-size", "0"]
    modes = ["none", "blocks"]

    def run_gpt(n_layer, mode, micro, steps):
        return dtrain_summary(dtrain, base + ["--n-layer", str(n_layer), "--activation-checkpointing", mode,
                                              "--micro-batch-size", str(micro), "--global-batch-size", str(micro),
                                              "--max-steps", str(steps)])

    activations = {}  # (L, mode, micro) -> bytes
    ms = {(n, mode): [] for n in layers for mode in modes}
    for n_layer in layers:
        for mode in modes:
            activations[(n_layer, mode, micros[0])] = run_gpt(n_layer, mode, micros[0], 3)["memory"]["activations_bytes"]
        for repeat in range(repeats):
            for mode in (modes if repeat % 2 == 0 else modes[::-1]):
                summary = run_gpt(n_layer, mode, micros[1], timed_steps)
                activations[(n_layer, mode, micros[1])] = summary["memory"]["activations_bytes"]
                ms[(n_layer, mode)].append(summary["steady_ms_per_step"])
    per_sample = {(n, mode): (activations[(n, mode, micros[1])] - activations[(n, mode, micros[0])]) /
                  (micros[1] - micros[0]) for n in layers for mode in modes}
    # Least squares of none's bytes per sample against L: slope = one block, intercept = the head.
    xs, ys = layers, [per_sample[(n, "none")] for n in layers]
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    block = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    head = mean_y - block * mean_x
    block_input = block_size * n_embd * 4
    rows, record = [], {"block_bytes_per_sample": block, "head_bytes_per_sample": head,
                        "block_input_bytes_per_sample": block_input, "layers": {}}
    kib = lambda b: f"{b / 1024:,.0f}"
    for n in layers:
        formula = n * block_input + block + head
        none_ms, blocks_ms = statistics.median(ms[(n, "none")]), statistics.median(ms[(n, "blocks")])
        record["layers"][n] = {"none_bytes_per_sample": per_sample[(n, "none")],
                               "blocks_bytes_per_sample": per_sample[(n, "blocks")], "formula": formula,
                               "ms_none": ms[(n, "none")], "ms_blocks": ms[(n, "blocks")]}
        rows.append([n, kib(per_sample[(n, "none")]), kib(per_sample[(n, "blocks")]),
                     f"{per_sample[(n, 'none')] / per_sample[(n, 'blocks')]:.2f}", kib(formula),
                     f"{per_sample[(n, 'blocks')] / formula:.2f}", f"{none_ms:.0f}", f"{blocks_ms:.0f}",
                     f"{blocks_ms / none_ms:.2f}"])
    table(f"15. --activation-checkpointing, GPT width {n_embd}, block {block_size}, KJV, 1 rank (KiB per sample: slope "
          f"of activations between micro {micros[0]} and {micros[1]}; formula L x {kib(block_input)} + one block "
          f"{kib(block)} + head {kib(head)}, fitted from none; steady ms/step at micro {micros[1]}, median of "
          f"{repeats} interleaved)",
          ["layers", "none", "blocks", "none/blocks", "formula", "blocks/formula", "ms none", "ms blocks",
           "blocks/none"], rows)
    results["activation_checkpointing"] = record




def ini_values(path):
    """configs/*.ini as a dict (no sections; comments dropped)."""
    values = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            values[key] = value
    return values


def language_model(args, dtrain, bench, results):
    """Section 16: the default language-model job (configs/kjv_gpt.ini, mpirun -np 2) against a plain
    PyTorch loop of the same model and recipe (bench/lm_peer.py, Debian's torch 1.13, one process of 2
    threads), trained on the same packed verses and scored on the same whole held-out verses; one run each,
    one after the other (each takes the 2 cores)."""
    print("\n16. the language model on two cores: configs/kjv_gpt.ini against a plain PyTorch loop "
          "(validation bits per byte within 300 s of wall time, goal <= 2.0)")
    config = os.path.join(ROOT, "configs", "kjv_gpt.ini")
    c = ini_values(config)
    out = os.path.join(ROOT, "runs", "bench", "lm")
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    run(["mpirun", "--allow-run-as-root", "-np", "2", dtrain, "--config", config, "--out-dir", out])
    wall = time.time() - start
    summary = json.load(open(os.path.join(out, "summary.json")))
    split = os.path.join(ROOT, "runs", "bench", "kjv_split.json")
    run([bench, "kjv_split", "--out", split, "--seed", c.get("seed", "0"),
         "--validation-size", c.get("validation-size", "1000")])
    start = time.time()
    peer = last_json(run(["/usr/bin/python3", os.path.join(ROOT, "bench", "lm_peer.py"), "--split", split,
                          "--n-layer", c["n-layer"], "--n-head", c["n-head"], "--n-embd", c["n-embd"],
                          "--block-size", c["block-size"], "--batch", c["global-batch-size"],
                          "--base-batch", c["base-batch-size"], "--warmup", c.get("warmup-steps", "0"),
                          "--epochs", c.get("epochs", "1"), "--lr", c["lr"], "--min-lr", c.get("min-lr", "0"),
                          "--weight-decay", c.get("weight-decay", "0"), "--clip", c.get("grad-clip-norm", "0"),
                          "--seed", c.get("seed", "0"), "--threads", "2"]).stdout)
    peer_wall = time.time() - start
    rows = [["dtrain (mpirun -np 2)", f"{summary['val_bits_per_byte']:.3f}", f"{summary['train_seconds']:.0f}",
             f"{wall:.0f}", f"{summary['tokens_per_sec']:,.0f}"],
            ["PyTorch loop (1 process, 2 threads)", f"{peer['val_bits_per_byte']:.3f}",
             f"{peer['train_seconds']:.0f}", f"{peer_wall:.0f}", f"{peer['tokens_per_sec']:,.0f}"]]
    table("validation bits per byte on the held-out verses", ["", "val bits/byte", "train s", "wall s", "tokens/s"],
          rows)
    results["lm"] = {"dtrain": {"val_bits_per_byte": summary["val_bits_per_byte"], "wall_seconds": wall,
                                "train_seconds": summary["train_seconds"], "tokens_per_sec": summary["tokens_per_sec"]},
                     "peer": dict(peer, wall_seconds=peer_wall)}


def precision_cpu(args, dtrain, results):
    """Section 17: --precision on the CPU: a GPT of configs/kjv_gpt.ini's shape at world size 1, fp32
    against bf16-mixed, interleaved, medians: steady ms per step and activation bytes."""
    print("\n17. --precision on the CPU (configs/kjv_gpt.ini's GPT, world 1, micro 32, 1 thread): fp32 against "
          "bf16-mixed")
    samples = {"fp32": [], "bf16-mixed": []}
    acts = {}
    for _ in range(args.repeats):
        for precision in samples:
            out = os.path.join(ROOT, "runs", "bench", "precision-" + precision)
            shutil.rmtree(out, ignore_errors=True)
            run([dtrain, "--config", os.path.join(ROOT, "configs", "kjv_gpt.ini"), "--precision", precision,
                 "--global-batch-size", "32", "--micro-batch-size", "32", "--threads", "1", "--max-steps", "60",
                 "--eval-every", "0", "--validation-size", "100", "--log-every", "60", "--out-dir", out])
            summary = json.load(open(os.path.join(out, "summary.json")))
            samples[precision].append(summary["steady_ms_per_step"])
            acts[precision] = summary["memory"]["activations_bytes"]
    fp32, bf16 = statistics.median(samples["fp32"]), statistics.median(samples["bf16-mixed"])
    table("steady ms per step (medians)", ["", "fp32", "bf16-mixed", "bf16 / fp32"],
          [["ms per step", f"{fp32:.1f}", f"{bf16:.1f}", f"{bf16 / fp32:.2f}"],
           ["activation bytes", f"{acts['fp32']:,}", f"{acts['bf16-mixed']:,}",
            f"{acts['bf16-mixed'] / acts['fp32']:.2f}"]])
    results["precision"] = {"ms_per_step": samples, "activations_bytes": acts}


if __name__ == "__main__":
    main()
