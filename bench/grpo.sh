#!/usr/bin/env bash
# GRPO on the CPU: rollout tokens/s with the shared prompt cache and batching against one batch without
# sharing and against one-at-a-time generation; then GRPO step time (rollouts + update) on the same model.
# Prints markdown tables.
#
#   bench/grpo.sh          (env: PROMPTS=4 GROUP=8 PROMPT_TOKENS=128 MAX_TOKENS=64 STEPS=6 PRESET=small
#                           PARTS=rollouts,steps DTYPE=f32; HOST and ROLLOUT_BENCH name prebuilt binaries,
#                           as on a machine without Rust)
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS=${PROMPTS:-4}
GROUP=${GROUP:-8}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
MAX_TOKENS=${MAX_TOKENS:-64}
STEPS=${STEPS:-6}
PRESET=${PRESET:-small}
PARTS=${PARTS:-rollouts,steps}
WORK=${WORK:-target/bench}
mkdir -p "$WORK"

DTYPE=${DTYPE:-f32}
if [ -z "${HOST:-}" ]; then
  cargo build --release -p host --example rollout_bench >&2
  cargo build --release -p host >&2
  HOST=target/release/host
fi
ROLLOUT_BENCH=${ROLLOUT_BENCH:-target/release/examples/rollout_bench}
MODEL="$WORK/$PRESET-llama-$DTYPE"
[ -d "$MODEL" ] || $HOST fixture --family llama --preset "$PRESET" --dtype "$DTYPE" --out "$MODEL" --seed 0 >&2

if [[ $PARTS == *rollouts* ]]; then
echo "Rollouts: $PROMPTS prompts × $GROUP completions, $PROMPT_TOKENS prompt tokens, $MAX_TOKENS new tokens each ($PRESET preset, $DTYPE)"
echo
echo "| mode | seconds | generated tokens | tokens/s | peak memory GB |"
echo "|---|---|---|---|---|"
$ROLLOUT_BENCH "$MODEL" "$PROMPTS" "$GROUP" "$PROMPT_TOKENS" "$MAX_TOKENS" > "$WORK/rollouts.jsonl"
python3 - "$WORK/rollouts.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"| {r['mode']} | {r['seconds']:.2f} | {r['generated_tokens']} | {r['tokens_per_second']:.1f} | {r['peak_memory_gb']:.3f} |")
PY
fi

[[ $PARTS == *steps* ]] || exit 0
# GRPO steps: the same prompt and completion sizes through the trainer (rank-8 LoRA on all linears).
python3 - "$WORK/grpo-prompts.jsonl" "$PROMPT_TOKENS" <<'PY'
import json, sys
words = "the model reads two numbers and writes their sum with care".split()
with open(sys.argv[1], "w") as f:
    for i in range(64):
        text = " ".join(words[(i + j) % len(words)] for j in range(int(sys.argv[2]) // 2))
        f.write(json.dumps({"prompt": text, "answer": str(i)}) + "\n")
PY
cat > "$WORK/grpo-bench.toml" <<TOML
[model]
path = "$MODEL"
[lora]
mapper = { kind = "all_linear" }
rank = 8
[data]
train = "$WORK/grpo-prompts.jsonl"
batch_size = $PROMPTS
max_seq_length = $((PROMPT_TOKENS * 2 + MAX_TOKENS))
[rollout]
num_generations = $GROUP
max_tokens = $MAX_TOKENS
[[reward]]
kind = "length_penalty"
target = 16
per_token = 0.01
[optimizer]
kind = "adamw"
lr = 1e-5
[train]
steps = $STEPS
save_every = 1000
[loss]
kind = "grpo"
beta = 0.04
[output]
dir = "$WORK/grpo-bench"
TOML
$HOST run --config "$WORK/grpo-bench.toml" >&2
echo
echo "GRPO steps (beta 0.04: reference forward with adapters off; first step excluded: it compiles)"
echo
python3 - "$WORK/grpo-bench/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
med = lambda k: statistics.median(r[k] for r in rows)
print("| step s | sampling s | reference forward s | update s | sampling tok/s | update tok/s |")
print("|---|---|---|---|---|---|")
update = med("step_seconds") - med("rollout_seconds") - med("rollout_forward_seconds")
print(f"| {med('step_seconds'):.2f} | {med('rollout_seconds'):.2f} | {med('rollout_forward_seconds'):.2f} | {update:.2f} | {med('rollout_tokens_per_second'):.1f} | {med('tokens') / update:.0f} |")
PY
