"""Writes the GRPO demo's data: small additions (a digit plus 1, 2 or 3), as prompts with answers.

    python3 data/make_grpo_data.py      (deterministic; rewrites data/grpo and data/arith)

data/arith/train.jsonl: {"prompt", "completion"} rows ("The answer is N.") that taught the bundled demo model
  (models/tiny-arith, see models/make_tiny_arith.sh) the answer format and some of the sums.
data/grpo/train.jsonl: {"prompt", "answer"} for every one of the 30 sums; GRPO's `exact_answer` reward reads
  `answer`.
data/grpo/valid.jsonl: the same with the small addend first (1, 2 or 3 plus 4..9), sums training never asks in
  that order ([eval] prompts).
"""
import json
import random
from pathlib import Path


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main():
    root = Path(__file__).resolve().parent
    rng = random.Random(7)
    sums = [(a, b) for a in range(10) for b in (1, 2, 3)]
    rng.shuffle(sums)
    write(root / "arith" / "train.jsonl", [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is {a + b}."} for a, b in sums])
    write(root / "grpo" / "train.jsonl", [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in sums])
    write(root / "grpo" / "valid.jsonl", [{"prompt": f"What is {b} + {a}?", "answer": str(a + b)} for b in (1, 2, 3) for a in range(4, 10)])


if __name__ == "__main__":
    main()
