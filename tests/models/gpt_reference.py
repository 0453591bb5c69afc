"""dtrain's --model gpt in PyTorch (the definition in docs/models.md), for
gpt_test.cpp to compare logits with in both directions.

    gpt_reference.py WEIGHTS TOKENS OUT
        Loads WEIGHTS (dtrain's save_weights / --export) with
        load_state_dict(strict=True) and writes the logits on TOKENS to OUT.
    gpt_reference.py --save-seeded SEED WEIGHTS TOKENS OUT
        Builds the model from torch.manual_seed(SEED), perturbs every
        parameter (so biases and LayerNorms are not their trivial initial
        values), writes torch.save(model.state_dict(), WEIGHTS), the file a
        PyTorch user has, and the logits on TOKENS to OUT.

TOKENS (torch.load) holds "tokens", int64 [N, T], and "config", int64
[vocab_size, block_size, n_layer, n_head, n_embd]. OUT (torch.save) gets
{"logits": float32 [N, T, vocab_size], "tokens": the tokens it read}. Runs with torch 1.13 and 2.x.
"""
import argparse
import math
from collections import OrderedDict

import torch
from torch import nn


# ---- The definition documented in docs/models.md (## gpt), unchanged --------
class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        N, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(N, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.n_head))
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(N, T, C))


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(n_embd, 4 * n_embd), gelu=nn.GELU(), c_proj=nn.Linear(4 * n_embd, n_embd)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Gpt(nn.Module):
    def __init__(self, vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one tensor, two names

    def forward(self, tokens):  # int64 [N, T] -> logits [N, T, vocab_size]
        positions = torch.arange(tokens.size(1), device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))
# ---- end of the documented definition ----------------------------------------


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("tokens")
    parser.add_argument("out")
    parser.add_argument("--save-seeded", type=int, metavar="SEED")
    args = parser.parse_args()

    batch = torch.load(args.tokens)
    vocab_size, block_size, n_layer, n_head, n_embd = batch["config"].tolist()
    if args.save_seeded is not None:
        torch.manual_seed(args.save_seeded)
        model = Gpt(vocab_size, block_size, n_layer, n_head, n_embd)
        with torch.no_grad():
            for p in model.parameters():  # the tied weight once
                p.add_(0.1 * torch.randn_like(p))
        state = model.state_dict()
        # PyTorch keeps both names of the tied weight, on one storage.
        assert state["wte.weight"].data_ptr() == state["lm_head.weight"].data_ptr()
        torch.save(state, args.weights)
    else:
        model = Gpt(vocab_size, block_size, n_layer, n_head, n_embd)
        model.load_state_dict(torch.load(args.weights), strict=True)
        assert model.lm_head.weight is model.wte.weight, "loading untied the head"
    model.eval()
    with torch.no_grad():
        logits = model(batch["tokens"])
    # Two entries: pickle writes a one-entry dict with SETITEM, which dtrain's
    # reader refuses under LibTorch 1.13 (it reads SETITEMS).
    torch.save({"logits": logits, "tokens": batch["tokens"]}, args.out)


if __name__ == "__main__":
    main()
