"""PyTorch DDP on the GPT of docs/models.md, for comparison with dtrain's
configs/kjv_gpt.ini (bench/gpt_vs_ddp.py runs both).

Launched under mpirun (torchrun is broken in Debian's python3-torch); Open
MPI's rank variables become torch.distributed's. Gloo, 1 intra-op thread per
rank. The same work per step as dtrain: KJV verses cut into rows of at most
64 targets exactly as dtrain cuts them (pieces share one boundary byte), padded
to 64 with target -1, 32 rows per rank, AdamW, gradient clipping at 1, the
loss averaged over the global batch's target tokens (the token count is
all-reduced, as a loader without dtrain's shared permutation must). Prints
one JSON line on rank 0 with target tokens per second.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models"))
from gpt_reference import Gpt  # noqa: E402

from ddp_common import init_gloo_from_mpi  # noqa: E402


def kjv_rows(block):
    text = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True, check=True).stdout
    inputs, targets = [], []
    for line in text.split(b"\n"):
        if not line:
            continue
        verse = line.split(b" ", 1)[1]
        for start in range(0, max(len(verse) - 1, 0), block):
            piece = verse[start:start + block + 1]
            x, y = list(piece[:-1]), list(piece[1:])
            inputs.append(x + [0] * (block - len(x)))
            targets.append(y + [-1] * (block - len(y)))
    return torch.tensor(inputs), torch.tensor(targets)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--micro", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--port", default="29519")
    args = parser.parse_args()
    rank, world = init_gloo_from_mpi(args.port)

    inputs, targets = kjv_rows(64)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(Gpt(256, 64, 4, 4, 128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=0.1)
    tokens_done = 0

    def step(index):
        nonlocal tokens_done
        window = order[index * args.micro * world:(index + 1) * args.micro * world]
        mine = window[rank::world]
        x, y = inputs[mine], targets[mine]
        count = torch.tensor([(y != -1).sum().item()], dtype=torch.float64)
        dist.all_reduce(count)
        optimizer.zero_grad()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1), ignore_index=-1,
                                                 reduction="sum") * world / count.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens_done += int(count.item())

    for i in range(3):  # warm-up
        step(i)
    tokens_done = 0
    dist.barrier()
    start = time.perf_counter()
    for i in range(3, 3 + args.steps):
        step(i)
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        print(json.dumps({"mode": "ddp", "torch": torch.__version__, "tokens_per_sec": tokens_done / seconds,
                          "ms_per_step": 1000 * seconds / args.steps}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
