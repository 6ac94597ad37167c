"""Writes the bundled preference data: arithmetic questions with a right, well-formed answer and a wrong,
sloppy one (a tiny random model cannot learn arithmetic, but it can learn which style is preferred, so the
demo's reward margin and accuracy visibly rise on held-out questions too).

    python3 data/make_preference_data.py      (deterministic; rewrites data/preference and data/kto)

data/preference/{train,valid}.jsonl: {"prompt", "chosen", "rejected"} for DPO, ORPO and SimPO.
data/kto/{train,valid}.jsonl: {"prompt", "completion", "label"}, half right (true), half wrong (false).
"""
import json
import random
from pathlib import Path


def question(rng):
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    op = rng.choice("+-*")
    if op == "*":
        a, b = a % 13, b % 13
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    wrong = answer + rng.choice([-3, -2, -1, 1, 2, 3, 10])
    sloppy = rng.choice(["maybe {}?", "{} i guess", "idk, {}?", "um {}"]).format(wrong)
    return f"What is {a} {op} {b}?", f"The answer is {answer}.", sloppy


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main():
    root = Path(__file__).resolve().parent
    rng = random.Random(7)
    for split, n in [("train", 400), ("valid", 48)]:
        pairs, labelled = [], []
        for i in range(n):
            prompt, right, wrong = question(rng)
            pairs.append({"prompt": prompt, "chosen": right, "rejected": wrong})
            labelled.append({"prompt": prompt, "completion": right if i % 2 == 0 else wrong, "label": i % 2 == 0})
        write(root / "preference" / f"{split}.jsonl", pairs)
        write(root / "kto" / f"{split}.jsonl", labelled)


if __name__ == "__main__":
    main()
