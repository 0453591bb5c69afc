"""A plain PyTorch loop of dtrain's language-model job, for bench/run_bench.py --only lm:
the GPT of docs/models.md (tests/models/gpt_reference.py) trained one
process, --threads intra-op threads, on the same training verses packed as
dtrain's --pack packs them (the verses each ended by '\\n', cut into rows of
block + 1 bytes that share their boundary byte), with dtrain's LR schedule
(linear scaling from --base-batch, warmup from the base LR, cosine to
--min-lr over the epochs), AdamW and clipping at 1; scored on the same whole
held-out verses as dtrain scores them (one verse a row, cut at the block
size, padding ignored). The verses come from `dtrain_bench kjv_split`.
Prints one JSON line.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models"))
from gpt_reference import Gpt  # noqa: E402


def packed_rows(documents, block):
    stream = torch.tensor(list(b"".join(d.encode() + b"\n" for d in documents)), dtype=torch.long)
    rows = (stream.numel() - 1) // block
    index = torch.arange(rows).unsqueeze(1) * block + torch.arange(block + 1)
    full = stream[index]
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


def verse_rows(documents, block):
    inputs, targets = [], []
    for verse in documents:
        data = list(verse.encode())
        for start in range(0, max(len(data) - 1, 0), block):
            piece = data[start:start + block + 1]
            x, y = piece[:-1], piece[1:]
            inputs.append(x + [0] * (block - len(x)))
            targets.append(y + [-1] * (block - len(y)))
    return torch.tensor(inputs), torch.tensor(targets)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--split", required=True)
    for name, default in (("n-layer", 4), ("n-head", 4), ("n-embd", 128), ("block-size", 128), ("batch", 64),
                          ("base-batch", 64), ("warmup", 0), ("epochs", 1), ("threads", 2), ("seed", 0)):
        p.add_argument("--" + name, type=int, default=default)
    for name, default in (("lr", 3e-3), ("min-lr", 0.0), ("weight-decay", 0.1), ("clip", 1.0)):
        p.add_argument("--" + name, type=float, default=default)
    args = p.parse_args()
    start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    split = json.load(open(args.split))
    x, y = packed_rows(split["train"], args.block_size)
    vx, vy = verse_rows(split["validation"], args.block_size)
    model = Gpt(256, args.block_size, args.n_layer, args.n_head, args.n_embd)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = x.size(0) // args.batch
    total = steps_per_epoch * args.epochs
    peak = args.lr * args.batch / args.base_batch

    def lr_at(step):
        if step < args.warmup:
            return args.lr + (peak - args.lr) * step / args.warmup
        progress = min(max((step - args.warmup) / max(total - args.warmup, 1), 0.0), 1.0)
        return args.min_lr + (peak - args.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    train_start = time.time()
    step = 0
    for epoch in range(args.epochs):
        order = torch.randperm(x.size(0))
        for i in range(steps_per_epoch):
            rows = order[i * args.batch:(i + 1) * args.batch]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            logits = model(x[rows])
            loss = F.cross_entropy(logits.view(-1, 256), y[rows].view(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            step += 1
    train_seconds = time.time() - train_start
    model.eval()
    total_loss, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, vx.size(0), 256):
            logits = model(vx[i:i + 256])
            total_loss += F.cross_entropy(logits.view(-1, 256), vy[i:i + 256].reshape(-1), ignore_index=-1,
                                          reduction="sum").item()
            tokens += int((vy[i:i + 256] >= 0).sum())
    nats = total_loss / tokens
    print(json.dumps({"val_bits_per_byte": nats / math.log(2), "val_loss": nats, "steps": step,
                      "train_seconds": train_seconds, "wall_seconds": time.time() - start,
                      "tokens_per_sec": step * args.batch * args.block_size / train_seconds,
                      "validation_tokens": tokens, "torch": torch.__version__, "threads": args.threads}))


if __name__ == "__main__":
    main()
