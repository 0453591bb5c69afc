# Weights interop with PyTorch (Debian's python3-torch at /usr/bin/python3):
# a state_dict saved by torch.save loads into dtrain; dtrain's exports load
# in PyTorch, with the documented names, and give the same logits.
source "$(dirname "$0")/common.sh"
LOGITS=${DTRAIN_LOGITS:?path to the dtrain_logits helper}
"$PYTHON" -c "import torch" 2>/dev/null || fail "$PYTHON has no torch: apt-get install python3-torch"
SYN=(--dataset synthetic --synthetic-train-samples 256 --synthetic-test-samples 64 --hidden 64,32)

cp "$(dirname "$0")/../models/reference_models.py" "$WORK/model.py"

# 1. A PyTorch state_dict (an OrderedDict with _metadata) loads into dtrain,
#    and dtrain exports it back bit for bit.
(cd "$WORK" && "$PYTHON" - <<'PY')
import torch
from model import Mlp
torch.manual_seed(0)
model = Mlp([64, 32])
torch.save(model.state_dict(), "python_sd.pt")
torch.save(model.state_dict(), "legacy.pt", _use_new_zipfile_serialization=False)
torch.save(Mlp([64, 16]).state_dict(), "wrong_shape.pt")
PY
"$DTRAIN" "${SYN[@]}" --micro-batch-size 32 --epochs 0 --init-from "$WORK/python_sd.pt" \
  --export "$WORK/roundtrip.pt" --out-dir "$WORK/run0" >/dev/null
(cd "$WORK" && "$PYTHON" - <<'PY') || fail "state_dict round trip"
import torch
original = torch.load("python_sd.pt")
exported = torch.load("roundtrip.pt")
assert isinstance(exported, dict), type(exported)
assert list(exported) == list(original), (list(exported), list(original))
for name in original:
    assert torch.equal(exported[name], original[name]), name
print("ok: PyTorch state_dict -> dtrain -> torch.load, bit for bit:", ", ".join(original))
PY

# 2. Train in dtrain from those weights, export, and compare logits on a fixed
#    input: dtrain's (via dtrain_logits) against PyTorch's.
mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 16 --max-steps 4 --init-from "$WORK/python_sd.pt" \
  --export "$WORK/trained.pt" --out-dir "$WORK/run1" >/dev/null
"$LOGITS" "$WORK/trained.pt" "$WORK/logits.pt" --hidden 64,32
(cd "$WORK" && "$PYTHON" - <<'PY') || fail "logits differ"
import torch
from model import Mlp
model = Mlp([64, 32])
trained = torch.load("trained.pt")
model.load_state_dict(trained, strict=True)
assert not torch.equal(trained["head.weight"], torch.load("python_sd.pt")["head.weight"]), "training changed nothing"
ref = torch.load("logits.pt")
with torch.no_grad():
    logits = model(ref["input"])
diff = (logits - ref["logits"]).abs().max().item()
assert diff < 1e-5, diff
print(f"ok: exported weights give dtrain's logits in PyTorch (max abs diff {diff:.2e})")
PY

# 3. Files dtrain cannot use get one line that says what to do.
expect_error 1 "hidden.1.weight is [16, 64] in the file but [32, 64] in the model" -- \
  "$DTRAIN" "${SYN[@]}" --micro-batch-size 32 --epochs 0 --init-from "$WORK/wrong_shape.pt" --out-dir "$WORK/run2"
expect_error 1 "re-save it in Python with torch.save" -- \
  "$DTRAIN" "${SYN[@]}" --micro-batch-size 32 --epochs 0 --init-from "$WORK/legacy.pt" --out-dir "$WORK/run2"
echo "interop: all passed"
