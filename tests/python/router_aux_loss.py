"""The routers' load-balancing loss from mlx-lm's router logits:
`python router_aux_loss.py DIR '[[ids], [ids]]' '[[real], [real]]'` prints it as JSON.

mlx-lm computes no such loss, so each sparse block's router (`gate` or `router` beside `switch_mlp` or
`experts`) is wrapped to record its logits, and the loss is computed here in NumPy as transformers'
`load_balancing_loss_func` defines it: router logits of all sparse layers concatenated, softmax over all
experts, top-k of those probabilities one-hot, both averaged over the (layer, token) pairs whose attention
mask is 1, then num_experts · Σ tokens_per_expert · router_prob_per_expert. Used by
host/tests/mlx_lm_reference.rs.
"""
import json
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm import load

path, ids, real = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
model, _ = load(path)
recorded = []


class Recorder(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def __call__(self, x):
        y = self.inner(x)
        recorded.append(y)
        return y


top_k = None
for _, module in model.named_modules():
    for name in ("gate", "router"):
        child = getattr(module, name, None) if isinstance(module, nn.Module) else None
        if isinstance(child, nn.Linear) and any(hasattr(module, e) for e in ("switch_mlp", "experts")):
            setattr(module, name, Recorder(child))
            for attr in ("top_k", "num_experts_per_tok"):
                top_k = getattr(module, attr, top_k)
assert recorded == [] and top_k is not None, "no sparse block found"

mx.eval(model(mx.array(ids)))
logits = np.concatenate([np.array(r.astype(mx.float32)).reshape(-1, r.shape[-1]) for r in recorded])
layers = len(recorded)
experts = logits.shape[-1]
probs = np.exp(logits - logits.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
chosen = np.argsort(-probs, axis=-1)[:, :top_k]
one_hot = np.eye(experts)[chosen]  # [layers·tokens, k, E]
mask = np.tile(np.array(real, dtype=np.float64).reshape(-1), layers)
tokens_per_expert = (one_hot * mask[:, None, None]).sum(0) / mask.sum()
router_prob_per_expert = (probs * mask[:, None]).sum(0) / mask.sum()
print(json.dumps(float((tokens_per_expert * router_prob_per_expert[None, :]).sum() * experts)))
