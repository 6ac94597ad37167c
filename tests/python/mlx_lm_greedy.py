"""Greedy tokens from mlx-lm: `python mlx_lm_greedy.py DIR '[1, 2, 3]' STEPS [MAX_KV_SIZE | q BITS GROUP START]`.

Prints a JSON object: the STEPS token ids sampled greedily (`tokens`) and their log-probs (`logprobs`), by mlx-lm's generate_step, through the model's default
cache or, with MAX_KV_SIZE, mlx-lm's rotating cache of that size (keeping 4), or with `q`, its quantized KV
cache (kv_bits, kv_group_size, quantized_kv_start). Used by host/tests/mlx_lm_reference.rs.
"""
import json
import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import RotatingKVCache, make_prompt_cache

path, ids, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
quantized = len(sys.argv) > 4 and sys.argv[4] == "q"
max_kv = int(sys.argv[4]) if len(sys.argv) > 4 and not quantized else None
model, _ = load(path)
# mlx-lm's own rotating cache, built directly (make_prompt_cache may return plain caches for some models).
cache = [RotatingKVCache(max_size=max_kv, keep=4) for _ in model.layers] if max_kv else make_prompt_cache(model)
extra = {}
if quantized:
    extra = dict(kv_bits=int(sys.argv[5]), kv_group_size=int(sys.argv[6]), quantized_kv_start=int(sys.argv[7]))
steps_out = list(generate_step(mx.array(ids), model, max_tokens=steps, prompt_cache=cache, **extra))
tokens = [int(t) for t, _ in steps_out]
logprobs = [float(lp[int(t)].item()) for t, lp in steps_out]
print(json.dumps({"tokens": tokens, "logprobs": logprobs}))
