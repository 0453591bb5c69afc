# Bad flags, config files, data and weights: one clear line, a non-zero exit
# on every rank, no hang and no stack trace.
source "$(dirname "$0")/common.sh"
SYN=(--dataset synthetic --synthetic-train-samples 256 --synthetic-test-samples 64 --out-dir "$WORK/run")

expect_error 2 "no-such-flag" -- "$DTRAIN" --no-such-flag
expect_error 2 "--lr must be positive" -- "$DTRAIN" --lr -1 --micro-batch-size 8
expect_error 2 "--lr-scaling cubic is not one of linear|sqrt|none" -- "$DTRAIN" --lr-scaling cubic
expect_error 2 "cannot open config file" -- "$DTRAIN" --config "$WORK/absent.ini"
# Text datasets and the GPT go together; text needs its file; a bad file is named.
expect_error 2 "train it with --model gpt" -- "$DTRAIN" --dataset kjv --micro-batch-size 8
expect_error 2 "--model gpt trains on text" -- "$DTRAIN" --model gpt --dataset synthetic --micro-batch-size 8
expect_error 2 "--dataset text needs --data-file" -- "$DTRAIN" --dataset text --model gpt --micro-batch-size 8
expect_error nonzero "$WORK/absent.txt" -- "$DTRAIN" --dataset text --data-file "$WORK/absent.txt" --model gpt --micro-batch-size 8
expect_error 2 "--n-embd" -- "$DTRAIN" --dataset kjv --model gpt --n-embd 30 --n-head 4 --micro-batch-size 8
printf 'in the beginning\nand the earth\n%.0s' {1..20} >"$WORK/tiny.txt"
expect_error 2 "needs a test split" -- "$DTRAIN" --dataset text --data-file "$WORK/tiny.txt" --model gpt \
  --micro-batch-size 8 --target test_accuracy:0.5
printf 'micro-batch-size = 8\nlearning_rate = 0.1\n' >"$WORK/bad.ini"
expect_error 2 "learning_rate" -- "$DTRAIN" --config "$WORK/bad.ini"

# Under mpirun every rank stops; the message appears once.
expect_error 2 "nearest valid global batches: 8 or 12" -- \
  mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 2 --global-batch-size 10
expect_error 2 "global batch 20 != micro 2 x accum 4 x world 2 = 16" -- \
  mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 2 --grad-accum-steps 4 --global-batch-size 20
expect_error 2 "exceeds the training set" -- \
  mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 512
expect_error 2 "resolved a different configuration" -- \
  mpirun -np 1 "$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --seed 1 : -np 1 "$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --seed 2
expect_error 2 "--activation-checkpointing blocks needs --model gpt (the mlp has no transformer blocks to recompute); use none" -- \
  mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --activation-checkpointing blocks
expect_error 1 "apt-get install dataset-fashion-mnist" -- \
  mpirun -np 2 "$DTRAIN" --micro-batch-size 8 --data-dir "$WORK/no-data" --out-dir "$WORK/run"

# No GPU here: asking for one is a clear error, not a crash.
if ! nvidia-smi -L >/dev/null 2>&1; then
  # The sanitized build leaves the NCCL backend out: then the error says so.
  nccl_error="--backend nccl needs a GPU"
  ldd "$DTRAIN" >"$WORK/ldd"  # to a file: grep -q closing a pipe early would fail the pipeline
  grep -q libnccl "$WORK/ldd" || nccl_error="--backend nccl: this dtrain was built without NCCL"
  expect_error 2 "$nccl_error" -- mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --backend nccl
  expect_error 2 "--device cuda: LibTorch sees no GPU" -- "$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --device cuda
fi
expect_error 2 "--grad-reduce-dtype int8 is not one of fp32|bf16|fp16" -- "$DTRAIN" --grad-reduce-dtype int8

# A truncated data file.
mkdir "$WORK/data"
cp /usr/share/datasets/fashion-mnist/*.gz "$WORK/data/"
head -c 100000 /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz | gzip -dc 2>/dev/null | gzip >"$WORK/data/train-images-idx3-ubyte.gz" || true
expect_error 1 "truncated" -- mpirun -np 2 "$DTRAIN" --micro-batch-size 8 --data-dir "$WORK/data" --out-dir "$WORK/run"

# Headers that claim more than the file holds: one line naming the file, no allocation of the claim.
mkdir "$WORK/huge"
cp /usr/share/datasets/fashion-mnist/*.gz "$WORK/huge/"
"$PYTHON" - "$WORK/huge/train-images-idx3-ubyte.gz" <<'PY'
import gzip, struct, sys
open(sys.argv[1], "wb").write(gzip.compress(struct.pack(">IIII", 0x803, 2147483647, 28, 28) + bytes(1000)))
PY
expect_error 1 "train-images-idx3-ubyte.gz is truncated: its header claims 2147483647 images of 28x28 (1.7 TB), but the file holds 1000 bytes of data" -- \
  mpirun -np 2 "$DTRAIN" --micro-batch-size 8 --data-dir "$WORK/huge" --out-dir "$WORK/run"
# A weights file given as a config, and a negative number for an unsigned option.
"$DTRAIN" --dataset synthetic --synthetic-train-samples 64 --micro-batch-size 8 --epochs 0 --hidden 4 \
  --export "$WORK/model.pt" --out-dir "$WORK/run" >/dev/null
expect_error 2 "model.pt:1: binary data; --config takes a text file" -- "$DTRAIN" --config "$WORK/model.pt"
expect_error 2 "--seed must be a non-negative integer (got -1)" -- "$DTRAIN" --seed -1
expect_error 2 "--out-dir 'runs/#1' holds a '#'" -- "$DTRAIN" --out-dir 'runs/#1'

# Weights that do not exist, are not weights, or do not fit the model.
expect_error 1 "does not exist" -- mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --init-from "$WORK/none.pt"
echo "not a zip" >"$WORK/junk.pt"
expect_error 1 "re-save it in Python" -- mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --init-from "$WORK/junk.pt"
"$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --epochs 0 --hidden 16 --export "$WORK/small.pt" >/dev/null
expect_error 1 "hidden.0.weight is [16, 784] in the file but [32, 784] in the model" -- \
  mpirun -np 2 "$DTRAIN" "${SYN[@]}" --micro-batch-size 8 --hidden 32 --init-from "$WORK/small.pt"

# An output folder that cannot be created.
touch "$WORK/file"
expect_error 1 "cannot create --out-dir" -- \
  "$DTRAIN" --dataset synthetic --synthetic-train-samples 256 --micro-batch-size 8 --out-dir "$WORK/file/sub"

# --help succeeds on every rank and prints the groups once.
mpirun -np 2 "$DTRAIN" --help >"$WORK/help" || fail "--help exited non-zero"
[ "$(grep -c '^Batch (global' "$WORK/help")" -eq 1 ] || fail "--help should print once"
pass "--help"

# Every option in --help is documented in docs/configuration.md.
DOCS=$(cd "$(dirname "$0")/../.." && pwd)/docs/configuration.md
for option in $(grep -oE '^  (-h \[ )?--[a-z-]+' "$WORK/help" | grep -oE -- '--[a-z-]+'); do
  grep -q -F -- "\`$option\`" "$DOCS" || fail "$option is not documented in docs/configuration.md"
done
pass "every --help option is in docs/configuration.md"
echo "cli_errors: all passed"
