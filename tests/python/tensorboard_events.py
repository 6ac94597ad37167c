"""Reads a TensorBoard log directory with TensorBoard's own reader and prints, as JSON, every scalar series
({tag: [[step, value], ...]}) and the steps of every text summary ({tag: [[step, text], ...]}).

Usage: python3 tensorboard_events.py LOGDIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# size_guidance 0 keeps every event (the default samples long series down).
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
texts = {
    t: [[e.step, b"".join(e.tensor_proto.string_val).decode("utf-8")] for e in acc.Tensors(t)]
    for t in tags["tensors"]
}
json.dump({"scalars": scalars, "texts": texts}, sys.stdout)
