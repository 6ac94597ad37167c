"""Mixed-length SFT data for bench/sft.sh: `python make_sft_data.py OUT_DIR [ROWS]`.

Text rows of 16 to 600 words drawn uniformly (seeded), so padding to a batch's longest row costs a lot unless
batches group similar lengths. Writes OUT_DIR/train.jsonl and OUT_DIR/valid.jsonl.
"""
import json
import os
import random
import sys

WORDS = ("the model reads writes solves learns checks answers counts trains a student teacher robot tool "
         "question story numbers answer word data line sum today quickly care again step order fun well").split()

out = sys.argv[1]
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 512
rng = random.Random(0)
os.makedirs(out, exist_ok=True)
for name, n in (("train.jsonl", rows), ("valid.jsonl", 32)):
    with open(os.path.join(out, name), "w") as f:
        for _ in range(n):
            length = rng.randint(16, 600)
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(length))}) + "\n")
