"""Adapters made by mlx-lm itself: `python mlx_lm_make_adapters.py MODEL_DIR OUT_DIR KIND [KEYS_JSON]`, KIND lora
or dora.

Converts the last layer's q_proj, v_proj and down_proj (or the module keys given) with mlx-lm's own LoRA code, gives lora_b (and DoRA's
magnitudes) nonzero values, and writes adapters.safetensors and adapter_config.json as `mlx_lm.lora` does.
"""
import json
import os
import sys

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.tuner.utils import linear_to_lora_layers

path, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
model, _ = load(path)
model.freeze()
keys = json.loads(sys.argv[4]) if len(sys.argv) > 4 else ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
params = {"rank": 4, "scale": 3.0, "dropout": 0.0, "keys": keys}
linear_to_lora_layers(model, 1, params, use_dora=(kind == "dora"))
mx.random.seed(0)
trainable = dict(tree_flatten(model.trainable_parameters()))
for name, value in trainable.items():
    if name.endswith("lora_b") or name.endswith(".m"):
        trainable[name] = value + 0.05 * mx.random.normal(value.shape)
model.load_weights(list(trainable.items()), strict=False)
os.makedirs(out, exist_ok=True)
mx.save_safetensors(os.path.join(out, "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
with open(os.path.join(out, "adapter_config.json"), "w") as f:
    json.dump({"fine_tune_type": kind, "num_layers": 1, "lora_parameters": params}, f)
