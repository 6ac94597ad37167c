"""mlx_lm.lora's training loop, instrumented: `python mlx_lm_lora_bench.py <mlx_lm.lora arguments>`.

Runs mlx-lm's own `train_model` (what `mlx_lm.lora --train` runs) with a reporting callback and prints its
per-step reports as JSON: tokens/s counts mlx-lm's supervised target tokens, peak memory is MLX's. (mlx-lm's
`run()` replaces any callback it is given, hence this wrapper rather than the command itself.)
"""
import json
import sys
import types

import mlx.core as mx
from mlx_lm import lora
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import load_dataset
from mlx_lm.utils import load

args = vars(lora.build_parser().parse_args(sys.argv[1:]))
for key, value in lora.CONFIG_DEFAULTS.items():
    if args.get(key) is None:
        args[key] = value
args = types.SimpleNamespace(**args)


class Reports(TrainingCallback):
    def __init__(self):
        self.train = []

    def on_train_loss_report(self, info):
        self.train.append(info)

    def on_val_loss_report(self, info):
        pass


model, tokenizer = load(args.model)
train_set, valid_set, _ = load_dataset(args, tokenizer)
reports = Reports()
mx.reset_peak_memory()
lora.train_model(args, model, train_set, valid_set, reports)
print(json.dumps(reports.train))
