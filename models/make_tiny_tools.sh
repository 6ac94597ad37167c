#!/usr/bin/env bash
# Rebuilds the bundled tool-use demo model, models/tiny-tools, in two stages of full fine-tuning:
# models/tiny-arith taught to answer a sum by calling the calculator tool in Qwen's <tool_call> format and
# copying its result into the answer (configs/tiny-tools-sft.toml on data/tools/sft.jsonl: 2,000 steps, about
# an hour on 2 CPU cores; the bundled weights of this stage were trained on an NVIDIA H200 in about a
# minute), then taught that half the time it may answer at once (configs/tiny-tools-mix.toml on
# data/tools/sft-mixed.jsonl: 150 steps, about 4 minutes). Deterministic up to float rounding.
#
#   models/make_tiny_tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p host
HOST=target/release/host
python3 data/make_tool_data.py
rm -rf runs/tiny-tools-sft runs/tiny-tools-mix models/tiny-tools
$HOST run --config configs/tiny-tools-sft.toml
$HOST run --config configs/tiny-tools-mix.toml
mkdir -p models/tiny-tools
cp runs/tiny-tools-mix/{config.json,generation_config.json,model.safetensors,tokenizer.json,tokenizer_config.json} models/tiny-tools/
