"""LARS and LAMB written out literally from their definitions, for
large_batch_optimizers_test.cpp to compare dtrain's C++ optimizers with.

    optimizer_reference.py IN OUT --lrs LR... [hyperparameters]

IN (torch.load) holds, per parameter NAME, its initial value NAME.init and
the gradient of each step NAME.grad.K (K = 0, 1, ...). Step K uses LR lrs[K].
OUT (torch.save) gets lars.NAME and lamb.NAME: the parameter after all steps.
Parameters of at most one dimension get no weight decay and trust ratio 1.
"""
import argparse

import torch


def excluded(w):
    return w.dim() <= 1


def ratio_or_one(numerator, denominator):
    return numerator / denominator if numerator > 0 and denominator > 0 else 1.0


def lars(weights, grads, lrs, momentum, weight_decay, trust_coefficient):
    weights = dict(weights)
    velocity = {name: torch.zeros_like(w) for name, w in weights.items()}
    for step, lr in enumerate(lrs):
        for name, w in weights.items():
            g = grads[name][step]
            if excluded(w):
                trust = 1.0
            else:
                g = g + weight_decay * w
                trust = ratio_or_one(trust_coefficient * w.norm().item(), g.norm().item())
            velocity[name] = momentum * velocity[name] + lr * trust * g
            weights[name] = w - velocity[name]
    return weights


def lamb(weights, grads, lrs, beta1, beta2, eps, weight_decay):
    weights = dict(weights)
    m = {name: torch.zeros_like(w) for name, w in weights.items()}
    v = {name: torch.zeros_like(w) for name, w in weights.items()}
    for t, lr in enumerate(lrs, start=1):
        for name, w in weights.items():
            g = grads[name][t - 1]
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            m_hat = m[name] / (1 - beta1**t)
            v_hat = v[name] / (1 - beta2**t)
            r = m_hat / (v_hat.sqrt() + eps)
            if excluded(w):
                ratio = 1.0
            else:
                r = r + weight_decay * w
                ratio = ratio_or_one(w.norm().item(), r.norm().item())
            weights[name] = w - lr * ratio * r
    return weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--lrs", type=float, nargs="+", required=True)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--trust-coefficient", type=float, default=0.001)
    parser.add_argument("--beta1", type=float, default=0.9)
    parser.add_argument("--beta2", type=float, default=0.999)
    parser.add_argument("--eps", type=float, default=1e-6)
    args = parser.parse_args()

    given = torch.load(args.input)
    names = [key[: -len(".init")] for key in given if key.endswith(".init")]
    weights = {name: given[name + ".init"] for name in names}
    grads = {name: [given[f"{name}.grad.{k}"] for k in range(len(args.lrs))] for name in names}

    result = {}
    for name, w in lars(weights, grads, args.lrs, args.momentum, args.weight_decay, args.trust_coefficient).items():
        result["lars." + name] = w
    for name, w in lamb(weights, grads, args.lrs, args.beta1, args.beta2, args.eps, args.weight_decay).items():
        result["lamb." + name] = w
    torch.save(result, args.output)


if __name__ == "__main__":
    main()
