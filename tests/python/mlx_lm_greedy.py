"""Greedy tokens from mlx-lm: `python mlx_lm_greedy.py DIR '[1, 2, 3]' STEPS [MAX_KV_SIZE]`.

Prints a JSON list of STEPS token ids sampled greedily by mlx-lm's generate_step, through the model's default
cache or, with MAX_KV_SIZE, mlx-lm's rotating cache of that size (keeping 4). Used by
host/tests/mlx_lm_reference.rs.
"""
import json
import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import RotatingKVCache, make_prompt_cache

path, ids, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
max_kv = int(sys.argv[4]) if len(sys.argv) > 4 else None
model, _ = load(path)
# mlx-lm's own rotating cache, built directly (make_prompt_cache may return plain caches for some models).
cache = [RotatingKVCache(max_size=max_kv, keep=4) for _ in model.layers] if max_kv else make_prompt_cache(model)
tokens = [int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=steps, prompt_cache=cache)]
print(json.dumps(tokens))
