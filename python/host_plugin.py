"""Write `host` plugins in Python: a reward is a function, served over host's JSON-lines protocol (version 1).

    # rewards.py
    from host_plugin import serve_reward

    def score(prompts, completions, answer, **columns):
        return [1.0 if c.strip().endswith(str(a)) else 0.0 for c, a in zip(completions, answer)]

    serve_reward(score)

and in the run's TOML:

    [[reward]]
    kind = "command"
    command = ["python3", "rewards.py"]

`score` is called as TRL calls a reward function: `prompts` and `completions` (lists of strings, one per
completion), `completion_ids` (lists of token ids), and every column of the data rows as a keyword argument
(one value per completion, None where a row lacks the column). It returns one float per completion, or None
where the reward does not apply. Anything it prints goes to stderr (stdout carries the protocol).

The host puts this file on the child's PYTHONPATH, so `import host_plugin` works without installing
anything; it needs only the standard library. The protocol itself is documented in host's README
("Rewards in any language"), for plugins in other languages.
"""
import json
import math
import sys
import traceback

PROTOCOL = 1


def _columns(rows):
    names = []
    for row in rows:
        for key in row:
            if key not in names:
                names.append(key)
    return {name: [row.get(name) for row in rows] for name in names}


def _check_scores(scores, count):
    if scores is None or isinstance(scores, (str, bytes, dict)):
        raise TypeError(f"score() returned {type(scores).__name__}; return a list of {count} floats (or None)")
    scores = list(scores)
    if len(scores) != count:
        raise ValueError(f"score() returned {len(scores)} scores for {count} completions")
    out = []
    for i, s in enumerate(scores):
        if s is None:
            out.append(None)
            continue
        if isinstance(s, (str, bytes)) or not hasattr(s, "__float__"):
            raise TypeError(f"score {i} is {s!r}; return a float, or None for 'not applicable'")
        value = float(s)
        if not math.isfinite(value):
            raise ValueError(f"score {i} is {value}; return a finite float, or None for 'not applicable'")
        out.append(value)
    return out


def serve_reward(score, stdin=None, stdout=None):
    """Answers the host's requests with `score` until the host closes stdin."""
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    # The user's prints must not corrupt the protocol: while serving, print() goes to stderr.
    sys.stdout = sys.stderr

    def send(message):
        out.write(json.dumps(message, allow_nan=False) + "\n")
        out.flush()

    for line in stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        kind = message.get("type")
        if kind == "hello":
            if message.get("protocol") != PROTOCOL:
                print(f"host_plugin: the host speaks protocol {message.get('protocol')}, this helper {PROTOCOL}", file=sys.stderr)
            send({"type": "ready", "protocol": PROTOCOL})
        elif kind == "score":
            request_id = message.get("id")
            try:
                completions = message["completions"]
                columns = _columns(message.get("rows", []))
                for reserved in ("prompts", "completions", "completion_ids"):
                    columns.pop(reserved, None)
                scores = score(
                    prompts=message["prompts"],
                    completions=completions,
                    completion_ids=message["completion_ids"],
                    **columns,
                )
                send({"type": "scores", "id": request_id, "scores": _check_scores(scores, len(completions))})
            except Exception:
                send({"type": "error", "id": request_id, "message": traceback.format_exc(limit=8)})
        else:
            send({"type": "error", "id": message.get("id"), "message": f"host_plugin: unknown request type {kind!r}"})
