"""Reference logits from mlx-lm: `python mlx_lm_logits.py DIR '[1, 2, 3]' [ADAPTER_DIR]`.

Prints a JSON list (positions) of lists (vocabulary) of float32 logits. Used by host/tests/mlx_lm_reference.rs.
"""
import json
import sys

import mlx.core as mx
from mlx_lm import load

path, ids = sys.argv[1], json.loads(sys.argv[2])
adapter = sys.argv[3] if len(sys.argv) > 3 else None
model, _ = load(path, adapter_path=adapter)
logits = model(mx.array([ids]))
mx.eval(logits)
print(json.dumps(logits[0].astype(mx.float32).tolist()))
