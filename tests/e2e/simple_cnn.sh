# Shallue et al.'s Simple CNN (--model simple-cnn) against the PyTorch
# definition in docs/models.md, taken from that file so the docs stay true:
# PyTorch's weights load through --init-from and train; dtrain's export loads
# in PyTorch with the documented names and gives dtrain's logits within 1e-5.
source "$(dirname "$0")/common.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOGITS=${DTRAIN_LOGITS:?path to the dtrain_logits helper}
"$PYTHON" -c "import torch" 2>/dev/null || fail "$PYTHON has no torch: apt-get install python3-torch"
SYN=(--dataset synthetic --synthetic-train-samples 128 --synthetic-test-samples 32 --model simple-cnn)

# The python block after the marker in docs/models.md.
awk '/<!-- simple-cnn:/ {found=1; next} found && /^```python/ {inside=1; next} inside && /^```/ {exit} inside' \
  "$ROOT/docs/models.md" >"$WORK/model.py"
grep -q "class SimpleCnn" "$WORK/model.py" || fail "no SimpleCnn block in docs/models.md"

(cd "$WORK" && "$PYTHON" - <<'PY') || fail "PyTorch's SimpleCnn"
import torch
from model import SimpleCnn
torch.manual_seed(0)
model = SimpleCnn()
assert sum(p.numel() for p in model.parameters()) == 3274634, sum(p.numel() for p in model.parameters())
torch.save(model.state_dict(), "python_sd.pt")
PY

# PyTorch -> dtrain: the same logits before any training.
"$DTRAIN" "${SYN[@]}" --micro-batch-size 32 --epochs 0 --init-from "$WORK/python_sd.pt" \
  --export "$WORK/roundtrip.pt" --out-dir "$WORK/run0" >/dev/null
"$LOGITS" "$WORK/python_sd.pt" "$WORK/logits0.pt" --model simple-cnn
# dtrain trains at 2 ranks and exports; PyTorch loads it.
mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 16 --max-steps 3 --lr 0.05 \
  --init-from "$WORK/python_sd.pt" --export "$WORK/trained.pt" --out-dir "$WORK/run1" >/dev/null
"$LOGITS" "$WORK/trained.pt" "$WORK/logits1.pt" --model simple-cnn
(cd "$WORK" && "$PYTHON" - <<'PY') || fail "logits differ"
import torch
from model import SimpleCnn
original = torch.load("python_sd.pt")
assert list(torch.load("roundtrip.pt")) == list(original)
for weights, logits_file in (("python_sd.pt", "logits0.pt"), ("trained.pt", "logits1.pt")):
    model = SimpleCnn()
    model.load_state_dict(torch.load(weights), strict=True)
    reference = torch.load(logits_file)
    with torch.no_grad():
        logits = model(reference["input"])
    diff = (logits - reference["logits"]).abs().max().item()
    assert diff < 1e-5, (weights, diff)
    print(f"ok: {weights}: PyTorch's logits are dtrain's (max abs diff {diff:.2e})")
assert not torch.equal(torch.load("trained.pt")["fc.weight"], original["fc.weight"]), "training changed nothing"
PY
pass "simple-cnn: PyTorch -> dtrain and dtrain -> PyTorch, logits within 1e-5"
