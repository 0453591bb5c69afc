"""PyTorch's sharpness of dtrain's MLP on Fashion-MNIST, the way PyHessian
measures it: Hessian-vector products by double backward, power iteration
from dtrain's start vector (run/sharpness.h), a fixed number of iterations,
the Rayleigh quotient of the last iterate. The training loss is the mean
cross-entropy over the first SAMPLES training samples in file order
(dtrain with --validation-size 0), in blocks summed in float64.

    /usr/bin/python3 tests/run/sharpness_reference.py WEIGHTS HIDDEN SAMPLES ITERATIONS [DATA_DIR]

Prints the estimate.
"""

import gzip
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
sys.dont_write_bytecode = True
from reference_models import Mlp  # noqa: E402

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # data/dataset.cpp


def first_samples(data_dir, count):
    with gzip.open(f"{data_dir}/train-images-idx3-ubyte.gz") as file:
        images = np.frombuffer(file.read(), np.uint8, offset=16)[:count * 784]
    with gzip.open(f"{data_dir}/train-labels-idx1-ubyte.gz") as file:
        labels = np.frombuffer(file.read(), np.uint8, offset=8)[:count]
    inputs = (torch.tensor(images, dtype=torch.float32).reshape(count, 1, 28, 28) / 255.0 - FASHION_MEAN) / FASHION_STD
    return inputs, torch.tensor(labels, dtype=torch.long)


def start_vector(parameters):
    total = sum(p.numel() for p in parameters)
    index = np.arange(1, total + 1, dtype=np.uint64)
    flat = (index * np.uint64(2654435761)) % np.uint64(2 ** 32)
    flat = flat.astype(np.float64) / 2 ** 32 - 0.5
    return torch.tensor(flat / np.linalg.norm(flat))


def main(weights, hidden, samples, iterations, data_dir="/usr/share/datasets/fashion-mnist"):
    model = Mlp([int(width) for width in hidden.split(",")])
    model.load_state_dict(torch.load(weights), strict=True)
    parameters = list(model.parameters())
    inputs, targets = first_samples(data_dir, samples)
    v = start_vector(parameters)
    estimate = None
    for _ in range(iterations):
        pieces = []
        offset = 0
        for p in parameters:
            pieces.append(v[offset:offset + p.numel()].reshape(p.shape).float())
            offset += p.numel()
        loss = nn.functional.cross_entropy(model(inputs), targets, reduction="sum") / samples
        grads = torch.autograd.grad(loss, parameters, create_graph=True)
        dot = sum((g * piece).sum() for g, piece in zip(grads, pieces))
        hv = torch.cat([h.reshape(-1).double() for h in torch.autograd.grad(dot, parameters)])
        estimate = torch.dot(v, hv).item()
        v = hv / hv.norm()
    print(f"{estimate:.9g}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:])
