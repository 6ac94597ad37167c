#!/usr/bin/env bash
# LoRA SFT real-token throughput and peak memory: `host run` against mlx_lm.lora's training loop on the same
# fixture model and the same mixed-length data (16-600 words per row), rank 8, all linear layers, AdamW at a
# constant 1e-4, no prompt masking. Prints a markdown table.
#
#   bench/sft.sh [PYTHON_WITH_MLX_LM]
#
# Settings (environment): STEPS=20 WARMUP=3 BATCH=4 PRESET=small (~88M; medium ~0.4B) DTYPE=f32 (bf16 on a GPU)
# FAMILY=llama (any `host fixture --family`) VOCAB=<model vocabulary, e.g. 262144 for Gemma's> MAX_SEQ=1024
# CHECKPOINTING=off|on|auto CHECKPOINT_LAYERS=N, HOST=<a prebuilt host binary> (default: cargo build --release),
# MAX_BATCH_TOKENS=N HOST_BATCH=M: host batches by a token budget instead (up to M rows; mlx-lm keeps BATCH rows).
# PACKING=1: host packs rows into HOST_BATCH (or BATCH) sequences of MAX_SEQ tokens ([data] packing), padded to
# PAD_MULTIPLE (default 128: MLX's cuDNN attention backward wants query lengths in multiples of 128).
# MLX_LM=0 skips mlx-lm; TORCH_PYTHON=<python with torch, transformers, peft> adds PyTorch + PEFT rows
# (bench/torch_peft_sft.py: TORCH_PACK=RxL packed, default ${BATCH}x${MAX_SEQ}; eager and torch.compile).
# Throughput is measured after WARMUP steps (both tools compile their step per batch shape): the tokens the
# steps train on (non-padding targets) over the time those steps took.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
BATCH=${BATCH:-4}
PRESET=${PRESET:-small}
DTYPE=${DTYPE:-f32}
WORK=${WORK:-target/bench}
mkdir -p "$WORK"
if [ -z "${HOST:-}" ]; then
  cargo build --release -p host >&2
  HOST=target/release/host
fi
source bench/blas.sh
same_blas "$HOST" "$PYTHON"
FAMILY=${FAMILY:-llama}
MAX_SEQ=${MAX_SEQ:-1024}
MODEL="$WORK/$PRESET-$FAMILY-$DTYPE${VOCAB:+-v$VOCAB}"
[ -d "$MODEL" ] || $HOST fixture --family "$FAMILY" --preset "$PRESET" --dtype "$DTYPE" --out "$MODEL" --seed 0 ${VOCAB:+--vocab-size $VOCAB} >&2
"$PYTHON" bench/make_sft_data.py "$WORK/sft-data" 512
case "$DTYPE" in f32) MODEL_DTYPE=float32 ;; bf16) MODEL_DTYPE=bfloat16 ;; f16) MODEL_DTYPE=float16 ;; esac
LAYERS_LINE=""
[ -n "${CHECKPOINT_LAYERS:-}" ] && LAYERS_LINE="checkpoint_layers = $CHECKPOINT_LAYERS"
BUDGET_LINE=""
[ -n "${MAX_BATCH_TOKENS:-}" ] && BUDGET_LINE="max_batch_tokens = $MAX_BATCH_TOKENS"
PACK_LINE=""
[ "${PACKING:-0}" = 1 ] && PACK_LINE=$'packing = true\npad_multiple = '"${PAD_MULTIPLE:-128}"

cat > "$WORK/sft-bench.toml" <<TOML
[model]
path = "$MODEL"
dtype = "$MODEL_DTYPE"
[lora]
mapper = { kind = "all_linear" }
rank = 8
scale = 20.0
[data]
train = "$WORK/sft-data/train.jsonl"
batch_size = ${HOST_BATCH:-$BATCH}
$BUDGET_LINE
$PACK_LINE
max_seq_length = $MAX_SEQ
cache = { kind = "disk", dir = "$WORK/sft-cache" }
[optimizer]
kind = "adamw"
lr = 1e-4
[train]
steps = $STEPS
save_every = $STEPS
gradient_checkpointing = "${CHECKPOINTING:-off}"
$LAYERS_LINE
[output]
dir = "$WORK/sft-host"
TOML
host_out=$($HOST run --config "$WORK/sft-bench.toml")
echo "$host_out" >&2
host_peak=$(echo "$host_out" | sed -n 's/.*peak memory \([0-9.]*\) GB.*/\1/p')
host_row=$("$PYTHON" - "$WORK/sft-host/metrics.jsonl" "$WARMUP" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
steady = rows[int(sys.argv[2]):]
tokens = sum(r["tokens"] for r in steady)
seconds = sum(r["tokens"] / r["tokens_per_second"] for r in steady)
padded = sum(r["padded_tokens"] for r in rows)
real = sum(r["tokens"] for r in rows)
print(f"{tokens / seconds:.1f} {100 * (1 - real / padded):.1f}")
PY
)

echo "| tool | real tokens/s (steps $((WARMUP + 1))-$STEPS) | padding | peak memory GB |"
echo "|---|---|---|---|"
read -r host_tps host_pad <<<"$host_row"
echo "| host${PACK_LINE:+ (packed)} | $host_tps | $host_pad% | $host_peak |"
if [ -n "${TORCH_PYTHON:-}" ]; then
  for mode in "" --compile; do
    "$TORCH_PYTHON" bench/torch_peft_sft.py --model "$MODEL" --data "$WORK/sft-data/train.jsonl" --pack "${TORCH_PACK:-${BATCH}x${MAX_SEQ}}" \
      --steps "$STEPS" --warmup "$WARMUP" --max-seq "$MAX_SEQ" $mode --markdown 2>"$WORK/torch$mode.err" | tail -1 \
      || echo "| PyTorch+PEFT ${mode:-eager} | failed: see $WORK/torch$mode.err | | |"
  done
fi
[ "${MLX_LM:-1}" = 0 ] && exit 0

mkdir -p "$WORK/sft-mlxlm-data"
cp "$WORK/sft-data/train.jsonl" "$WORK/sft-mlxlm-data/train.jsonl"
mlx_json=$("${COMPETITOR_ENV[@]}" "$PYTHON" bench/mlx_lm_lora_bench.py --model "$MODEL" --train --data "$WORK/sft-mlxlm-data" \
  --fine-tune-type lora --optimizer adamw --num-layers -1 --batch-size "$BATCH" --iters "$STEPS" --learning-rate 1e-4 \
  --steps-per-report 1 --steps-per-eval $((STEPS + 1)) --val-batches 0 --max-seq-length "$MAX_SEQ" \
  --adapter-path "$WORK/sft-mlxlm" --save-every "$STEPS" 2>"$WORK/mlx_lm_lora.err" | tail -1)
mlx_row=$("$PYTHON" - "$mlx_json" "$WARMUP" <<'PY'
import json, sys
reports = json.loads(sys.argv[1])
steady = reports[int(sys.argv[2]):]
deltas = [r["trained_tokens"] - p["trained_tokens"] for p, r in zip(reports, reports[1:])][int(sys.argv[2]) - 1:]
seconds = sum(d / r["tokens_per_second"] for d, r in zip(deltas, steady))
print(f"{sum(deltas) / seconds:.1f} {max(r['peak_memory'] for r in reports):.3f}")
PY
)
read -r mlx_tps mlx_peak <<<"$mlx_row"
echo "| mlx_lm.lora | $mlx_tps | (pads each batch to its longest row, +1 to a multiple of 32) | $mlx_peak |"
