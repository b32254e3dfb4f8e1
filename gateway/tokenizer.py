"""A local token estimate, used only when a provider's own count never arrived (DESIGN §8).

No BPE file can be fetched at run time here, so this is a pre-tokenizer in the style of the
GPT and Claude tokenizers: runs of letters, runs of digits (three at most), single other
symbols, with a leading space kept on the following word. On English prose it lands within
~10-20% of cl100k; records counted this way are flagged `estimated`. The mock provider uses the
same function, which makes its usage deterministic and checkable.
"""

import re

_PIECES = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]|\s+", re.UNICODE)


def count_tokens(text: str) -> int:
    if not text:
        return 0
    return sum(1 for piece in _PIECES.finditer(text) if not piece.group().isspace() or "\n" in piece.group())


def split_tokens(text: str) -> list[str]:
    """The pieces `count_tokens` counts, in order, concatenating back to (nearly) the text."""
    return [m.group() for m in _PIECES.finditer(text)]


def count_message_tokens(messages: list) -> int:
    """Estimate of a chat prompt: content tokens plus a small per-message overhead."""
    total = 0
    for message in messages:
        total += 4
        if not isinstance(message, dict):
            continue
        total += count_tokens(_text_of(message.get("content")))
    return total + 2


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
