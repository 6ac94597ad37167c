"""Write `host` plugins in Python: a reward or an environment is a function, served over host's JSON-lines
protocol (version 1). Rewards:

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

Environments (multi-turn GRPO with tools):

    # env.py
    from host_plugin import serve_environment

    TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {...}}}]

    def step(messages, turn, last, answer, **columns):
        calls = messages[-1].get("tool_calls")
        if calls and not last:
            return [lookup(c["function"]["arguments"]) for c in calls]   # tool messages; the model goes on
        return 1.0 if answer in messages[-1]["content"] else 0.0         # the episode ends with this reward

    serve_environment(step, TOOLS)

with `[environment] kind = "command"`, `command = ["python3", "env.py"]`.

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


def _reply(value):
    """One environment reply from what `step` returned."""
    if value is None:
        return {"done": True, "reward": None}
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise TypeError(f"step() returned {value!r}; return a list of tool messages, a reward (float) or None")
    if isinstance(value, (int, float)) or (hasattr(value, "__float__") and not isinstance(value, (list, tuple))):
        reward = float(value)
        if not math.isfinite(reward):
            raise ValueError(f"step() returned the reward {reward}; return a finite float, or None for no reward")
        return {"done": True, "reward": reward}
    messages = list(value)
    if not messages:
        raise ValueError("step() returned an empty list; return None (or a reward) to end the episode")
    for i, m in enumerate(messages):
        if not isinstance(m, str):
            raise TypeError(f"step() returned message {i} = {m!r}; tool messages are strings")
    return {"observations": messages}


def serve_environment(step, tools, stdin=None, stdout=None):
    """Answers the host's environment requests until the host closes stdin.

    `tools` is a list of OpenAI function schemas. `step(messages, turn, last, **columns)` is called after each
    assistant turn of an episode: `messages` is the conversation (the latest assistant message last, its
    parsed calls under `tool_calls`), `turn` counts assistant turns, `last` says the episode cannot go on, and
    the data row's columns come as keyword arguments. It returns a list of strings (tool messages, one per
    call; the model continues), a float (the episode ends with this reward) or None (it ends without one).
    """
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    sys.stdout = sys.stderr

    def send(message):
        out.write(json.dumps(message, allow_nan=False) + "\n")
        out.flush()

    for line in stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        kind = message.get("type")
        request_id = message.get("id")
        try:
            if kind == "hello":
                if message.get("protocol") != PROTOCOL:
                    print(f"host_plugin: the host speaks protocol {message.get('protocol')}, this helper {PROTOCOL}", file=sys.stderr)
                send({"type": "ready", "protocol": PROTOCOL})
            elif kind == "tools":
                send({"type": "tools", "id": request_id, "tools": list(tools)})
            elif kind == "step":
                replies = []
                for turn in message["turns"]:
                    columns = {k: v for k, v in turn["row"].items() if k not in ("messages", "turn", "last")}
                    replies.append(_reply(step(turn["messages"], turn["turn"], turn["last"], **columns)))
                send({"type": "replies", "id": request_id, "replies": replies})
            else:
                send({"type": "error", "id": request_id, "message": f"host_plugin: unknown request type {kind!r}"})
        except Exception:
            send({"type": "error", "id": request_id, "message": traceback.format_exc(limit=8)})
