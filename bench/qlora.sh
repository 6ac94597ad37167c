#!/usr/bin/env bash
# QLoRA against LoRA SFT on the CPU: the same ~88M fixture in float32 and 4-bit (bench/generation.sh's models),
# LoRA rank 8 on every linear layer, batch 4 of rows cut to 64 tokens, AdamW 1e-4, STEPS steps. Prints a
# markdown table of tokens/s over the whole run, peak memory and the final loss.
#
#   bench/qlora.sh                   HOST=<a host binary> (default: cargo build --release) STEPS=5
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-5}
WORK=${WORK:-target/bench}
mkdir -p "$WORK"
if [ -z "${HOST:-}" ]; then
  cargo build --release -p host >&2
  HOST=target/release/host
fi
[ -d "$WORK/small-llama" ] || $HOST fixture --family llama --preset small --out "$WORK/small-llama" --seed 0 >&2
[ -d "$WORK/small-llama-4bit" ] || $HOST quantize --model "$WORK/small-llama" --out "$WORK/small-llama-4bit" --bits 4 --group-size 64 >&2
python3 bench/make_sft_data.py "$WORK/sft-data" 512

echo "| model | tokens/s | peak memory GB | final loss |"
echo "|---|---|---|---|"
for model in small-llama small-llama-4bit; do
  rm -rf "$WORK/qlora-$model"
  cat > "$WORK/qlora-$model.toml" <<TOML
[model]
path = "$WORK/$model"
[lora]
mapper = { kind = "all_linear" }
rank = 8
scale = 20.0
[data]
train = "$WORK/sft-data/train.jsonl"
batch_size = 4
max_seq_length = 64
[optimizer]
kind = "adamw"
lr = 1e-4
[train]
steps = $STEPS
save_every = 1000
gradient_checkpointing = "off"
[output]
dir = "$WORK/qlora-$model"
TOML
  summary=$($HOST run --config "$WORK/qlora-$model.toml" 2>&1 | grep "peak memory")
  loss=$(tail -1 "$WORK/qlora-$model/metrics.jsonl" | python3 -c "import json,sys; print(round(json.load(sys.stdin)['loss'], 4))")
  tps=$(echo "$summary" | sed -E 's/^([0-9.]+) tokens\/s.*/\1/')
  mem=$(echo "$summary" | sed -E 's/.*peak memory ([0-9.]+) GB.*/\1/')
  echo "| $model | $tps | $mem | $loss |"
done
