"""dtrain's --model mlp in PyTorch, with the parameter names of
docs/models.md: the reference of the interop and sharpness tests
(tests/e2e/interop.sh, tests/run/sharpness_reference.py). The Simple CNN's
reference is docs/models.md's own block (tests/e2e/simple_cnn.sh)."""

import torch
from torch import nn


class Mlp(nn.Module):
    """dtrain's --model mlp, with the parameter names of docs/models.md."""

    def __init__(self, hidden, in_features=784, classes=10):
        super().__init__()
        self.hidden = nn.ModuleList()
        for width in hidden:
            self.hidden.append(nn.Linear(in_features, width))
            in_features = width
        self.head = nn.Linear(in_features, classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)
