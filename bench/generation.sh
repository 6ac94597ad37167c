#!/usr/bin/env bash
# Prompt and decode tokens/s and peak memory of `host generate` against mlx-lm on the same ~100M-parameter
# fixture model, float32 and 4-bit, same MLX (0.32.2) and same BLAS. Prints a markdown table.
#
#   bench/generation.sh [PYTHON_WITH_MLX_LM]        (default: python3)
#   FAMILY=llama (any `host fixture --family`), FOURBIT=1 (0: float32 only; mlx-lm 0.32.2 cannot run 4-bit
#   experts on mlx 0.32.2, so MoE families take FOURBIT=0), PRESET=small, DTYPE=f32 (bf16 on a GPU),
#   HOST=<a prebuilt host binary> (default: cargo build --release)
#
# The Python needs mlx==0.32.2, mlx-cpu==0.32.2 and mlx-lm==0.32.2; bench/blas.sh gives its MLX our BLAS
# (or refuses to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
PROMPT_TOKENS=${PROMPT_TOKENS:-512}
MAX_TOKENS=${MAX_TOKENS:-128}
RUNS=${RUNS:-3}
WORK=${WORK:-target/bench}
mkdir -p "$WORK"

if [ -z "${HOST:-}" ]; then
  cargo build --release -p host >&2
  HOST=target/release/host
fi
source bench/blas.sh
same_blas "$HOST" "$PYTHON"
FAMILY=${FAMILY:-llama}
PRESET=${PRESET:-small}
DTYPE=${DTYPE:-f32}
BASE="$PRESET-$FAMILY"
[ "$DTYPE" = f32 ] || BASE="$BASE-$DTYPE"
MODELS=("$BASE")
[ -d "$WORK/$BASE" ] || $HOST fixture --family "$FAMILY" --preset "$PRESET" --dtype "$DTYPE" --out "$WORK/$BASE" --seed 0 >&2
if [ "${FOURBIT:-1}" = 1 ]; then
  [ -d "$WORK/$BASE-4bit" ] || $HOST quantize --model "$WORK/$BASE" --out "$WORK/$BASE-4bit" --bits 4 --group-size 64 >&2
  MODELS+=("$BASE-4bit")
fi

# A fixed prompt of PROMPT_TOKENS ids (the same ids for both tools; the model's vocabulary is 8192).
PROMPT=$("$PYTHON" -c "import json; print(json.dumps([(i * 7919 + 13) % 4000 + 20 for i in range($PROMPT_TOKENS)]))")

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

echo "| model | tool | prompt tok/s | decode tok/s | peak memory GB |"
echo "|---|---|---|---|---|"
for model in "${MODELS[@]}"; do
  for tool in host mlx-lm; do
    p=(); d=(); m=()
    for _ in $(seq "$RUNS"); do
      if [ "$tool" = host ]; then
        out=$($HOST generate --model "$WORK/$model" --prompt-ids "$PROMPT" --max-tokens "$MAX_TOKENS" --ignore-eos --json)
        out=$(echo "$out" | "$PYTHON" -c "import json,sys; t=json.load(sys.stdin)['timings']; print(json.dumps(t))")
      else
        out=$("${COMPETITOR_ENV[@]}" "$PYTHON" bench/mlx_lm_generate.py "$WORK/$model" "$PROMPT" "$MAX_TOKENS")
      fi
      p+=("$(echo "$out" | field prompt_tokens_per_second)")
      d+=("$(echo "$out" | field decode_tokens_per_second)")
      m+=("$(echo "$out" | field peak_memory_gb)")
    done
    printf '| %s | %s | %.1f | %.1f | %.3f |\n' "$model" "$tool" \
      "$(printf '%s\n' "${p[@]}" | median)" "$(printf '%s\n' "${d[@]}" | median)" "$(printf '%s\n' "${m[@]}" | median)"
  done
done
