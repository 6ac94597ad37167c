"""Writes the tool-use demo's data: two-digit sums that the demo model answers through the calculator tool.

    python3 data/make_tool_data.py      (deterministic; rewrites data/tools)

data/tools/sft.jsonl: 4,000 conversations {"messages", "tools"} in which the assistant calls `calculator` with
  the sum (Qwen's <tool_call> JSON, the hermes format), reads the tool's result and answers "The answer is N.";
  data/tools/sft-mixed.jsonl: 1,000 more, half of them answered at once without the tool. They teach
  models/tiny-tools in two stages (see models/make_tiny_tools.sh).
data/tools/train.jsonl: {"prompt", "answer"} for GRPO with `[environment] kind = "calculator"`, other sums.
data/tools/valid.jsonl: 64 more, for [eval] (none of them in sft.jsonl or train.jsonl).
The tool schema is the calculator environment's own (host/src/environment/calculator.rs), so the SFT
conversations are rendered with exactly the system prompt that GRPO's prompts get.
"""
import json
import random
from pathlib import Path

TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluates arithmetic: + - * / % ^ and parentheses.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def conversation(a, b, use_tool):
    question = {"role": "user", "content": f"What is {a} + {b}?"}
    answer = {"role": "assistant", "content": f"The answer is {a + b}."}
    if not use_tool:
        return {"messages": [question, answer], "tools": [TOOL]}
    call = json.dumps({"name": "calculator", "arguments": {"expression": f"{a} + {b}"}})
    return {
        "messages": [
            question,
            {"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
            {"role": "tool", "content": str(a + b)},
            answer,
        ],
        "tools": [TOOL],
    }


def main():
    root = Path(__file__).resolve().parent / "tools"
    rng = random.Random(11)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    # Many distinct sums: with few, a small model memorizes question → answer instead of learning to copy
    # the numbers into the call and the tool's result into the answer.
    train, calls, valid, mixed = pairs[:256], pairs[272:4272], pairs[4272:4336], pairs[4336:5336]
    write(root / "sft.jsonl", [conversation(a, b, True) for a, b in calls])
    # Half of these answer without the tool (the right sum, which a model this small cannot compute itself):
    # taught them after sft.jsonl, the model calls the tool about half the time and GRPO has a choice to learn.
    write(root / "sft-mixed.jsonl", [conversation(a, b, rng.random() < 0.5) for a, b in mixed])
    write(root / "train.jsonl", [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in train])
    write(root / "valid.jsonl", [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in valid])


if __name__ == "__main__":
    main()
