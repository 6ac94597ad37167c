"""LoRA SFT throughput of PyTorch + transformers + PEFT on the model and data bench/sft.sh gives `host`: what a
Linux GPU user would pick instead. Same LoRA (rank 8, scale 20 = alpha 160 / rank 8, all seven linear layers of
every block, adapters in float32 over a bfloat16 base), AdamW at a constant 1e-4 (fused), clipping at 1.0,
SDPA attention.

    python bench/torch_peft_sft.py --model DIR --data train.jsonl [--pack 8x1024 | --rows 16] [--compile]
                                   [--steps 100] [--warmup 30] [--max-seq 1024]

--pack RxL: each step trains R sequences of L tokens cut from the rows laid end to end, position ids restarting
at every row, so transformers confines attention to each row (its packed-sequence detection from position ids)
and no target crosses a row boundary; --rows N: N rows per step in random order, padded to the longest.
Prints one JSON line: real tokens/s over the timed steps (targets that are not padding or row boundaries),
tokens per step, seconds per step and peak GB (torch.cuda.max_memory_allocated).
"""
import argparse
import json
import random
import time

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def rows_of(path, tokenizer, max_seq):
    rows = []
    with open(path) as f:
        for line in f:
            ids = tokenizer.encode(json.loads(line)["text"]).ids[:max_seq]
            if len(ids) >= 2:
                rows.append(ids)
    return rows


def packed_batches(rows, n, length, rng):
    """Endless steps of n sequences of `length` tokens: rows in random order laid end to end (a row that does
    not fit the rest of a sequence is cut there and goes on in the next one, as TRL's plain packing does)."""
    while True:
        order = rows[:]
        rng.shuffle(order)
        ids, pos = [], []
        for row in order:
            ids.extend(row)
            pos.extend(range(len(row)))
            while len(ids) >= n * length:
                x = torch.tensor(ids[: n * length]).view(n, length)
                p = torch.tensor(pos[: n * length]).view(n, length)
                ids, pos = ids[n * length:], pos[n * length:]
                # A sequence's first position may continue a row: restart it so nothing crosses sequences.
                p = p - p[:, :1]
                labels = x.clone()
                labels[p == 0] = -100
                # transformers shifts labels left: the target at t is labels[t + 1]; position 0 of every row
                # (label -100) is never a target, so no prediction crosses a row boundary.
                yield x, p, labels, int((labels[:, 1:] != -100).sum())


def padded_batches(rows, n, rng):
    while True:
        order = rows[:]
        rng.shuffle(order)
        for i in range(0, len(order) - n + 1, n):
            chunk = order[i: i + n]
            width = max(len(r) for r in chunk)
            x = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros_like(x)
            for j, r in enumerate(chunk):
                x[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            labels = x.masked_fill(mask == 0, -100)
            yield x, mask, labels, int((labels[:, 1:] != -100).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--pack", default=None, help="RxL, e.g. 8x1024")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--max-seq", type=int, default=1024)
    ap.add_argument("--markdown", action="store_true", help="also print bench/sft.sh's table row")
    a = ap.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    rows = rows_of(a.data, tokenizer, a.max_seq)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=160, lora_dropout=0.0, target_modules=targets))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    forward = torch.compile(model) if a.compile else model
    if a.pack:
        n, length = (int(v) for v in a.pack.split("x"))
        batches = packed_batches(rows, n, length, rng)
    else:
        batches = padded_batches(rows, a.rows or 8, rng)
    torch.cuda.reset_peak_memory_stats()
    tokens, seconds, positions = 0, 0.0, 0
    for step in range(a.steps):
        x, extra, labels, real = next(batches)
        x, extra, labels = x.cuda(), extra.cuda(), labels.cuda()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        kwargs = {"position_ids": extra} if a.pack else {"attention_mask": extra}
        # Autocast keeps the float32 adapters' matmuls in bfloat16, as MLX runs them over a bf16 base.
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(input_ids=x, labels=labels, **kwargs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            tokens += real
            seconds += dt
            positions += x.numel()
    timed = a.steps - a.warmup
    r = {
        "tokens_per_second": tokens / seconds,
        "tokens_per_step": tokens / timed,
        "positions_per_step": positions / timed,
        "step_seconds": seconds / timed,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
        "loss": float(loss),
    }
    print(json.dumps(r))
    if a.markdown:
        how = f"packed {a.pack}" if a.pack else f"{a.rows or 8} rows, padded"
        mode = "torch.compile" if a.compile else "eager"
        padding = 100 * (1 - r["tokens_per_step"] / r["positions_per_step"])
        print(f"| PyTorch+PEFT {mode}, {how} | {r['tokens_per_second']:.1f} | {padding:.1f}% | {r['peak_gb']:.3f} |")


if __name__ == "__main__":
    main()
