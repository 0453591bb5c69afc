# Shared parameters against PyTorch: a model with one Linear applied twice
# (tests/tied_model.h) trains 3 steps in dtrain on 2 ranks x accumulation 2,
# and the same model in PyTorch (Debian's python3-torch), where parameters()
# holds the tied weight once, ends at the same weights within 1e-5; the
# exported tied names stay identical.
source "$(dirname "$0")/common.sh"
TIED=${DTRAIN_TIED:?path to the dtrain_tied helper}
"$PYTHON" -c "import torch" 2>/dev/null || fail "$PYTHON has no torch: apt-get install python3-torch"

mpirun -np 2 "$TIED" "$WORK" --micro-batch-size 4 --global-batch-size 16 --lr 0.1 --lr-scaling none \
  --momentum 0.9 --nesterov true --weight-decay 0.001 --seed 3 || fail "dtrain_tied failed"

(cd "$WORK" && "$PYTHON" - <<'PY') || fail "tied model differs from PyTorch"
import torch
from torch import nn

class TiedMlp(nn.Module):
    def __init__(self, in_features, hidden, classes):
        super().__init__()
        self.input = nn.Linear(in_features, hidden)
        self.block1 = nn.Linear(hidden, hidden)
        self.block2 = self.block1
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        x = torch.relu(self.input(x.flatten(1)))
        x = torch.relu(self.block1(x))
        x = torch.relu(self.block2(x))
        return self.head(x)

data = torch.load("data.pt")
initial = torch.load("initial.pt")
final = torch.load("final.pt")
assert "block2.weight" in final and "block1.weight" in final, list(final)
assert torch.equal(final["block1.weight"], final["block2.weight"]), "tied names drifted apart"
assert torch.equal(final["block1.bias"], final["block2.bias"]), "tied names drifted apart"

model = TiedMlp(784, 12, 4)
model.load_state_dict(initial, strict=True)
assert len(list(model.parameters())) == 6
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.001)
for step in range(3):
    optimizer.zero_grad()
    # 16 samples, global batch 16: every step is the whole set, mean loss.
    loss = nn.functional.cross_entropy(model(data["inputs"]), data["targets"], reduction="sum") / 16
    loss.backward()
    optimizer.step()
worst = 0.0
for name, tensor in model.state_dict().items():
    moved = (final[name] - initial[name]).abs().max().item()
    assert moved > 0, f"{name} did not train"
    worst = max(worst, ((final[name] - tensor).norm() / tensor.norm()).item())
assert worst < 1e-5, worst
print(f"ok: tied model after 3 steps on 2 ranks x accum 2 matches PyTorch (max relative difference {worst:.1e})")
PY
echo "tied: all passed"
