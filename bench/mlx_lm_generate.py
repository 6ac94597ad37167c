"""mlx-lm's side of bench/generation.sh: greedy generation of exactly N tokens from given prompt ids.

`python mlx_lm_generate.py MODEL_DIR PROMPT_IDS_JSON MAX_TOKENS` prints one JSON object with the same
measures `host generate --json` reports: prompt tokens/s (prompt tokens over the time to the first token),
decode tokens/s (tokens after the first over the time after the first), peak memory in GB.
"""
import json
import sys
import time

import mlx.core as mx
from mlx_lm import load, stream_generate

path, prompt, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model, tokenizer = load(path)
# Generate exactly max_tokens, as `host generate --ignore-eos` does.
tokenizer._eos_token_ids = set()
mx.reset_peak_memory()
start = time.perf_counter()
first = None
count = 0
for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
    count += 1
    if first is None:
        first = time.perf_counter()
end = time.perf_counter()
print(json.dumps({
    "prompt_tokens_per_second": len(prompt) / (first - start),
    "decode_tokens_per_second": (count - 1) / (end - first),
    "generated": count,
    "peak_memory_gb": mx.get_peak_memory() / 1e9,
}))
