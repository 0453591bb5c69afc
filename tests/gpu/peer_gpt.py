"""The PyTorch peer of the kit's gpt_speed check (tests/gpu/kit.sh, docs/gpu.md):
dtrain's GPT (the definition of docs/models.md, imported from
tests/models/gpt_reference.py) trained by a plain eager loop as a PyTorch
user writes it: bf16 autocast around forward and loss, scaled_dot_product_attention,
fused AdamW, on random byte tokens (the speed does not depend on the text).

    peer_gpt.py --device cuda --micro-batch 32 --steps 40 [--compile] ...
        prints one JSON line: tokens_per_sec over the steps after --warmup,
        ms_per_step, peak_bytes, and what it ran with
    peer_gpt.py --largest-fit --budget-gib 16 ...
        the largest power-of-two micro-batch (up to --max-micro) whose
        forward, backward and step fit the budget (the caching allocator's
        memory fraction), one JSON line

Runs with torch 1.13 (explicit attention, the loop AdamW) and 2.x.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))
import gpt_reference  # noqa: E402

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def sdpa_forward(self, x):
    N, T, C = x.shape
    q, k, v = self.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(N, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.c_proj(y.transpose(1, 2).contiguous().view(N, T, C))


if HAS_SDPA:
    gpt_reference.CausalSelfAttention.forward = sdpa_forward


def build(args, device):
    torch.manual_seed(0)
    model = gpt_reference.Gpt(256, args.block_size, args.n_layer, args.n_head, args.n_embd)
    with torch.no_grad():  # GPT-2's initialization, as dtrain's (the speed does not depend on it)
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.02)
    model = model.to(device)
    fused = {"fused": True} if "fused" in torch.optim.AdamW.__init__.__code__.co_varnames else {}
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, **fused)
    except (RuntimeError, ValueError):  # a device the fused kernel does not support
        fused = {}
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    return model, optimizer, bool(fused)


def step(model, optimizer, tokens, targets, device, bf16):
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(tokens)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed(args, device):
    model, optimizer, fused = build(args, device)
    run = torch.compile(model) if args.compile else model
    tokens = torch.randint(0, 256, (args.micro_batch, args.block_size), device=device)
    targets = torch.randint(0, 256, (args.micro_batch, args.block_size), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compile_start = time.perf_counter()
    for _ in range(args.warmup):
        step(run, optimizer, tokens, targets, device, args.bf16)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step(run, optimizer, tokens, targets, device, args.bf16)
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "tokens_per_sec": args.steps * args.micro_batch * args.block_size / seconds,
        "ms_per_step": 1000 * seconds / args.steps,
        "warmup_seconds": start - compile_start,
        "steps": args.steps,
        "micro_batch": args.micro_batch,
        "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "loss": loss.item(),
        "torch": torch.__version__,
        "sdpa": HAS_SDPA,
        "fused_adamw": fused,
        "bf16_autocast": args.bf16,
        "compiled": args.compile,
    }


def largest_fit(args, device):
    if device.type != "cuda":
        return {"largest_micro_batch": None, "why": "a memory budget needs a GPU"}
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget_gib * 2**30 / total), device)
    largest, micro = 0, 1
    while micro <= args.max_micro:
        try:
            model, optimizer, _ = build(args, device)
            tokens = torch.randint(0, 256, (micro, args.block_size), device=device)
            step(model, optimizer, tokens, tokens, device, args.bf16)
            sync(device)
            largest = micro
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            model = optimizer = tokens = None
            torch.cuda.empty_cache()
        micro *= 2
    return {"largest_micro_batch": largest, "budget_gib": args.budget_gib}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--fp32", dest="bf16", action="store_false", help="no autocast")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--largest-fit", action="store_true")
    parser.add_argument("--budget-gib", type=float, default=16)
    parser.add_argument("--max-micro", type=int, default=512)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result = largest_fit(args, device) if args.largest_fit else speed(args, device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
