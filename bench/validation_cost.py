"""What parsing a request body at the edge costs (gateway/schemas.py), in microseconds per body.

No server, no database: the compiled validators on one core, median of several repetitions of
many calls each, for bodies shaped as the SDKs send them:

    chat typical        system + user message, four parameters (the bench kit's body)
    messages typical    the same as an Anthropic Messages body
    chat tools          three turns, two tools, a tool call and its result
    chat 1 MiB          one user message of 1 MiB of text
    chat 1 MiB blocks   1 MiB as 2,000 messages of two text parts each
    orjson 1 MiB        orjson.loads of the 1 MiB body, for scale (the gateway parses JSON anyway)

    .venv/bin/python bench/validation_cost.py [--reps 7]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402

from gateway.schemas import parse_chat, parse_messages  # noqa: E402

MIB = 1024 * 1024
TYPICAL = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a haiku about the sea, then explain it in two sentences."},
    ],
    "max_tokens": 100,
    "temperature": 0.7,
    "stream": False,
    "user": "bench",
}
MESSAGES = {
    "model": "claude-haiku-4-5",
    "system": "You are a helpful assistant.",
    "messages": [{"role": "user", "content": "Write a haiku about the sea, then explain it in two sentences."}],
    "max_tokens": 100,
    "temperature": 0.7,
}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
TOOLS = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 C, clear"},
    ],
    "tools": [TOOL, {**TOOL, "function": {**TOOL["function"], "name": "get_time"}}],
    "tool_choice": "auto",
}
ONE_MIB = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * MIB}]}
BLOCK = {"role": "user", "content": [{"type": "text", "text": "y" * 256}, {"type": "text", "text": "z" * 256}]}
BLOCKS = {"model": "gpt-4o-mini", "messages": [BLOCK] * 2000}


def per_call_us(fn, argument, *, reps: int) -> float:
    fn(argument)
    runs = []
    for _ in range(reps):
        calls = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < 0.3:
            fn(argument)
            calls += 1
        runs.append(elapsed / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    raw = orjson.dumps(ONE_MIB)
    cases = [
        ("chat typical", parse_chat, TYPICAL),
        ("messages typical", parse_messages, MESSAGES),
        ("chat tools", parse_chat, TOOLS),
        ("chat 1 MiB", parse_chat, ONE_MIB),
        (f"chat 1 MiB blocks ({len(orjson.dumps(BLOCKS)) / MIB:.2f} MiB)", parse_chat, BLOCKS),
        ("orjson 1 MiB (for scale)", orjson.loads, raw),
    ]
    for name, fn, argument in cases:
        print(f"{name:40} {per_call_us(fn, argument, reps=args.reps):10.1f} µs")


if __name__ == "__main__":
    main()
