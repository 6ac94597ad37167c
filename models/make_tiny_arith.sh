#!/usr/bin/env bash
# Rebuilds the bundled GRPO demo model, models/tiny-arith: a random 4-layer Qwen2-architecture fixture
# (host fixture --preset demo), taught the answer format and some two-digit sums by LoRA SFT
# (configs/tiny-arith-sft.toml on data/arith), then fused into plain weights. Deterministic up to float
# rounding; takes a few minutes on 2 CPU cores.
#
#   models/make_tiny_arith.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p host
HOST=target/release/host
python3 data/make_grpo_data.py
rm -rf runs/tiny-arith-base runs/tiny-arith-sft models/tiny-arith
$HOST fixture --family qwen2 --preset demo --seed 0 --out runs/tiny-arith-base
$HOST run --config configs/tiny-arith-sft.toml
$HOST fuse --model runs/tiny-arith-base --adapter runs/tiny-arith-sft --out models/tiny-arith
