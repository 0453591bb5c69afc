"""The kit's gpt_speed check (tests/gpu/kit.sh, docs/gpu.md): dtrain at world 1
on configs/gpt2_small.ini against a PyTorch eager loop of the same model
(tests/gpu/peer_gpt.py) on the same GPU, at the same micro-batch.

    gpt_speed.py --dtrain BUILD/dtrain --config configs/gpt2_small.ini \
                 --data-file kjv.txt --out DIR [--cpu] [--python PY]

Reports (one "figures:" JSON line): tokens/s of dtrain in bf16-mixed, tf32
and fp32 and of the peer (and of the peer under torch.compile when the time
allows), their ratio, the MFU of both (6N + 12 L T d FLOPs per token against
the GPU's dense bf16 peak), the largest micro-batch of each under one memory
budget, and which of issue 19's goals were met. Fails below the pass line:
dtrain's bf16-mixed tokens/s under 0.97x the peer's. --cpu: the rehearsal's
run on a 2-layer model, which checks that every field is filled, and judges
no speed. --step-split BIN adds dtrain_gpu_step_split's phases of the same
bf16-mixed step (data, forward+backward, all-reduce, non-finite check,
optimizer), each between device synchronizations: where the time goes.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of the device name.
BF16_PEAK = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12)]


DEADLINE = None  # set in main: each stage gets the time left, not a fixed share


def left():
    return max(10.0, DEADLINE - time.time())


def run(cmd, timeout=None):
    print("gpt_speed: " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or left())
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"kit-check: {cmd[0]} exited {done.returncode}")
    return done.stdout


def dtrain_speed(args, shape, precision, micro, steps, out):
    """tokens/s between the progress lines of step 20 and the last step:
    each line is written after the loss's all-reduce, a device sync."""
    cmd = args.mpirun + [args.dtrain, "--config", args.config, "--dataset", "text", "--data-file", args.data_file,
                         "--precision", precision, "--global-batch-size", str(micro), "--micro-batch-size", str(micro),
                         "--max-steps", str(steps), "--log-every", "20", "--eval-every", "0",
                         "--validation-size", "50", "--out-dir", out] + shape + args.device_flags
    run(cmd)
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train = [r for r in records if r.get("event") == "train"]
    first, last = train[0], train[-1]
    summary = json.load(open(os.path.join(out, "summary.json")))
    tokens = (last["step"] - first["step"]) * micro * args.block_size
    return {"tokens_per_sec": tokens / (last["elapsed_sec"] - first["elapsed_sec"]),
            "ms_per_step": 1000 * (last["elapsed_sec"] - first["elapsed_sec"]) / (last["step"] - first["step"]),
            "steps_timed": last["step"] - first["step"], "precision": summary.get("precision"),
            "fused_adamw": summary.get("fused_adamw"),
            "activations_bytes": summary.get("memory", {}).get("activations_bytes"),
            "peak_bytes": summary.get("memory", {}).get("peak_bytes"), "train_loss": last.get("train_loss")}


def last_json(text):
    """The last line of a tool's stdout that is a JSON object."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in: " + text[-300:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtrain", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--python", default="python3", help="the peer's Python, with torch")
    parser.add_argument("--mpirun", default="mpirun -np 1")
    parser.add_argument("--cpu", action="store_true", help="the rehearsal: a 2-layer model on the CPU")
    parser.add_argument("--budget-s", type=float, default=230)
    parser.add_argument("--step-split", help="dtrain_gpu_step_split: where dtrain's bf16-mixed step goes (GPU only)")
    args = parser.parse_args()
    start = time.time()
    global DEADLINE
    DEADLINE = start + args.budget_s
    figures = {}
    try:
        code = measure(args, figures, start)
    except (SystemExit, subprocess.TimeoutExpired, ValueError, KeyError, OSError) as error:
        # What was measured before the failure still reaches the report.
        figures["error"] = str(error)
        print("figures: " + json.dumps(figures))
        print(f"kit-check: gpt_speed stopped: {error}")
        sys.exit(1)
    sys.exit(code)


def measure(args, figures, start):
    args.mpirun = args.mpirun.split()
    here = os.path.dirname(os.path.abspath(__file__))
    if args.cpu:
        n_layer, n_head, n_embd, args.block_size, micro, steps = 2, 2, 64, 64, 4, 26
        args.device_flags = ["--device", "cpu", "--backend", "mpi"]
        device, budget_gib = "cpu", None
    else:
        n_layer, n_head, n_embd, args.block_size, micro, steps = 12, 12, 768, 1024, 32, 60
        args.device_flags = ["--device", "cuda", "--backend", "nccl"]
        device, budget_gib = "cuda", 16
    shape = ["--n-layer", str(n_layer), "--n-head", str(n_head), "--n-embd", str(n_embd),
             "--block-size", str(args.block_size)]
    peer_shape = ["--n-layer", str(n_layer), "--n-head", str(n_head), "--n-embd", str(n_embd),
                  "--block-size", str(args.block_size), "--device", device]
    figures.update({"model": {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": args.block_size,
                              "vocab_size": 256}, "micro_batch": micro})
    # dtrain: bf16-mixed, then what each step of precision buys.
    dtrain = figures["dtrain"] = {}
    for precision, count in (("bf16-mixed", steps), ("tf32", 30), ("fp32", 30)):
        dtrain[precision] = dtrain_speed(args, shape, precision, micro, count, os.path.join(args.out, precision))
    peer_cmd = [args.python, os.path.join(here, "peer_gpt.py")] + peer_shape + ["--micro-batch", str(micro)]
    peer = figures["peer"] = last_json(run(peer_cmd + ["--steps", str(steps - 20), "--warmup", "10"]))
    # N counts every parameter (the tied embedding once): 12 L d^2 + 13 L d
    # for the blocks, (V + T) d for the embeddings, 2 d for ln_f.
    n = 12 * n_layer * n_embd**2 + 13 * n_layer * n_embd + (256 + args.block_size) * n_embd + 2 * n_embd
    flops_per_token = 6 * n + 12 * n_layer * args.block_size * n_embd
    gpu = ""
    if device == "cuda":
        gpu = subprocess.run([args.python, "-c", "import torch; print(torch.cuda.get_device_name(0))"],
                             capture_output=True, text=True).stdout.strip()
    peak = next((flops for name, flops in BF16_PEAK if name in gpu), None)
    figures["gpu"], figures["bf16_peak_flops"], figures["flops_per_token"] = gpu or None, peak, flops_per_token
    mfu = lambda tokens_per_sec: tokens_per_sec * flops_per_token / peak if peak else None
    figures["mfu"] = {"dtrain": mfu(dtrain["bf16-mixed"]["tokens_per_sec"]), "peer": mfu(peer["tokens_per_sec"])}
    ratio = dtrain["bf16-mixed"]["tokens_per_sec"] / peer["tokens_per_sec"]
    figures["ratio_to_peer"] = ratio
    figures["bf16_over_fp32"] = dtrain["bf16-mixed"]["tokens_per_sec"] / dtrain["fp32"]["tokens_per_sec"]
    figures["tf32_over_fp32"] = dtrain["tf32"]["tokens_per_sec"] / dtrain["fp32"]["tokens_per_sec"]
    # The largest micro-batch of each under one budget.
    if budget_gib:
        fit = os.path.join(args.out, "fit")
        run(args.mpirun + [args.dtrain, "--config", args.config, "--dataset", "text", "--data-file", args.data_file,
                           "--global-batch-size", "512", "--micro-batch-size", "auto", "--memory-budget",
                           f"{budget_gib}GiB", "--max-steps", "1", "--eval-every", "0", "--validation-size", "50",
                           "--out-dir", fit] + shape + args.device_flags)
        peer_fit = last_json(run(peer_cmd + ["--largest-fit", "--budget-gib", str(budget_gib)]))
        figures["largest_micro_batch"] = {"budget_gib": budget_gib,
                                          "dtrain": json.load(open(os.path.join(fit, "summary.json")))["micro_batch_size"],
                                          "peer": peer_fit["largest_micro_batch"]}
    else:
        figures["largest_micro_batch"] = {"budget_gib": None, "dtrain": None, "peer": None,
                                          "why": "the CPU peer has no memory budget"}
    # Where dtrain's step goes: each phase between device synchronizations.
    if args.step_split and device == "cuda":
        split = subprocess.run([args.step_split, "--config", args.config, "--data-file", args.data_file,
                                "--micro", str(micro), "--accum", "1", "--steps", "20", "--warmup", "5"],
                               capture_output=True, text=True, timeout=left())
        try:
            figures["step_split"] = last_json(split.stdout)
        except ValueError:
            figures["step_split"] = {"error": (split.stderr.strip().splitlines() or ["exit %d" % split.returncode])[-1]}
    # torch.compile, for information, when the time left allows.
    remaining = DEADLINE - time.time()
    if device == "cuda" and remaining > 90:
        try:
            compiled = subprocess.run(peer_cmd + ["--compile", "--steps", str(steps - 20), "--warmup", "10"],
                                      capture_output=True, text=True, timeout=remaining - 10)
            figures["peer_compiled"] = last_json(compiled.stdout) if compiled.returncode == 0 \
                else {"error": compiled.stderr.strip().splitlines()[-1:]}
        except ValueError as error:
            figures["peer_compiled"] = {"error": str(error)}
        except subprocess.TimeoutExpired:
            figures["peer_compiled"] = {"error": f"did not finish in the {remaining:.0f} s left"}
    else:
        figures["peer_compiled"] = {"error": "no GPU" if device != "cuda" else f"only {remaining:.0f} s left"}
    largest = figures["largest_micro_batch"]
    figures["goals"] = {
        "tokens_per_sec_ge_1.05x_peer": ratio >= 1.05,
        "mfu_ge_40pct": None if figures["mfu"]["dtrain"] is None else figures["mfu"]["dtrain"] >= 0.40,
        "bf16_ge_5x_fp32": figures["bf16_over_fp32"] >= 5,
        "largest_micro_ge_peer": None if largest["peer"] is None else largest["dtrain"] >= largest["peer"],
    }
    figures["seconds"] = round(time.time() - start, 1)
    print("figures: " + json.dumps(figures))
    code = 0
    if not args.cpu and ratio < 0.97:
        print(f"kit-check: dtrain's bf16-mixed tokens/s is {ratio:.3f}x the PyTorch peer's (the pass line is 0.97x)")
        code = 1
    for precision, result in dtrain.items():
        if result["precision"] != precision:
            print(f"kit-check: the {precision} run recorded precision {result['precision']}")
            code = 1
    return code


if __name__ == "__main__":
    main()
