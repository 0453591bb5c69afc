"""PyTorch DDP on the benchmark MLP, for comparison with dtrain.

Launched by bench/run_bench.py under mpirun (torchrun is not used: it is
broken in Debian's python3-torch); Open MPI's rank variables become
torch.distributed's. Gloo backend, 1 intra-op thread per rank, synthetic data
in memory, SGD with momentum. Prints one JSON line on rank 0.
"""
import argparse
import json
import time

import torch
import torch.distributed as dist
from torch import nn

from ddp_common import init_gloo_from_mpi


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", default="1024,1024")
    parser.add_argument("--micro", type=int, default=64)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--port", default="29517")
    args = parser.parse_args()

    rank, world = init_gloo_from_mpi(args.port)

    torch.manual_seed(0)
    layers, width = [nn.Flatten()], 784
    for h in [int(x) for x in args.hidden.split(",")]:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    model = nn.parallel.DistributedDataParallel(nn.Sequential(*layers))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(rank)
    inputs = torch.randn(65536, 1, 28, 28, generator=generator)
    targets = torch.randint(0, 10, (65536,), generator=generator)

    def step(index):
        optimizer.zero_grad()
        for micro in range(args.accum):
            offset = ((index * args.accum + micro) * args.micro) % (65536 - args.micro)
            x, y = inputs[offset:offset + args.micro], targets[offset:offset + args.micro]
            loss = nn.functional.cross_entropy(model(x), y)
            if micro < args.accum - 1:
                with model.no_sync():
                    loss.backward()
            else:
                loss.backward()
        optimizer.step()

    for i in range(3):  # warm-up
        step(i)
    dist.barrier()
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        samples = args.steps * args.accum * args.micro * world
        print(json.dumps({"mode": "ddp", "torch": torch.__version__, "samples_per_sec": samples / seconds,
                          "seconds": seconds}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
