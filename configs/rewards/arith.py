"""The demo's GRPO reward in Python, for configs/grpo-python.toml: 1 for the right sum, plus 0.1 for the
trained answer format. It computes what configs/grpo.toml's two built-in rewards (exact_answer and
regex_format) compute, so the two configs train the same adapters (host/tests/cli.rs checks it).

The host starts this file once (`command = ["python3", "configs/rewards/arith.py"]`), sends each batch of
completions with the rows' columns (here `answer`), and reads one score per completion back; see
python/host_plugin.py. Anything printed goes to the host's stderr.
"""
import re

from host_plugin import serve_reward

NUMBER = re.compile(r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
FORMAT = re.compile(r"The answer is -?\d+\.")


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def score(prompts, completions, answer, **columns):
    scores = []
    for completion, want in zip(completions, answer):
        if want is None:
            scores.append(None)  # not applicable: a row without an answer
            continue
        found = NUMBER.findall(completion)
        got = number(found[-1].strip()) if found else None
        target = number(str(want).strip())
        right = got is not None and target is not None and abs(got - target) <= 1e-9 * max(abs(target), 1.0)
        formatted = FORMAT.fullmatch(completion.strip()) is not None
        scores.append((1.0 if right else 0.0) + (0.1 if formatted else 0.0))
    return scores


serve_reward(score)
