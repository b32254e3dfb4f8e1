"""Token counts: OpenAI's real BPE, and the admission bound that no body can cost more than.

Counting uses `bpe-openai` (GitHub's `bpe` crate with Python bindings), whose wheel carries the
o200k_base and cl100k_base tables: nothing is downloaded at run time (tiktoken fetches its tables
on first use, which this platform's machines cannot do), and its encoder is linear in the input,
where tiktoken's merge loop grows quadratically on a long run of one letter. Measured on this
2-core machine: "a" * 300,000 in 2.5 ms (tiktoken 78 ms), 200,000 CJK characters in 17 ms (86),
a 4 MiB body in 55 ms (a repeated English sentence) to 250-450 ms (varied Markdown, under load),
2-3x faster than the regex pre-tokenizer this module used to be. The Rust encoder holds the GIL,
so a thread would not free the event loop. The tables take about 90 MB per process, loaded on
first use (0.1 s).

Admission (`prompt_token_bound`) must never let a body in for less than it can cost, because a
tenant's budget and tokens-per-minute limit are held against that number until the provider's
usage settles it. What it adds up, by the catalog model's provider:

- OpenAI and Azure: the text counted with the model's own encoding (o200k_base for gpt-4o,
  gpt-4.1, gpt-4.5, gpt-5, o-series and gpt-oss; cl100k_base for gpt-4 and gpt-3.5); a name this
  module does not know (an alias, an Azure deployment) is counted with both and the larger kept,
  since the deployment is not chosen yet. OpenAI's chat framing is 3 tokens per message, 1 for
  a name, plus 3 to prime the reply; we hold 4 per message (5 with the message's own part
  overhead) and 3 per request, and count the role's text too.
- Anthropic (and any provider not named above): no Claude tokenizer ships offline, so each text
  is held at min(UTF-8 bytes, `CLAUDE_MARGIN` x its cl100k count). The byte count is a hard
  ceiling: a byte-level BPE (Claude's, like OpenAI's) never needs more than one token per byte,
  so CJK, emoji and random bytes are held at at most what they can cost. The margin covers
  ordinary text: against the one Claude tokenizer that was published (the legacy one, once in
  the anthropic SDK), the largest ratio to cl100k we measured was 2.0 (a run of tabs), then
  1.35 (Arabic), 1.25 (Cyrillic), 1.14 (Python), 1.07 (English); a run of one letter or of
  digits costs Claude fewer tokens than cl100k. English is therefore over-reserved about 1.9x.
  Claude's framing is not published (a one-word prompt bills about 8 tokens): we hold 6 per
  message and 10 per request.
- Every text part of a message, `system` (string or blocks), tool calls and tool results, and
  every field a message carries (role, name, ids, arguments) are counted, with `PART_OVERHEAD`
  per part. `tools`, `functions`, `tool_choice` and `response_format` are counted as their JSON
  text (more tokens than the TypeScript-like form OpenAI renders them in), plus `TOOL_OVERHEAD`
  per tool and, for Anthropic, its tool-use system prompt (346 tokens on current models; we hold
  `ANTHROPIC_TOOLS_PROMPT`).
- Each image is held at a per-image bound instead of its payload (`image_tokens_bound`): OpenAI's
  largest high-detail image is 85 + 170 x 8 tiles = 1,445 tokens on gpt-4o, 1,536 patches x 2.46
  = 3,779 on the patch-billed minis, but gpt-4o-mini bills 2,833 + 5,667 per tile, 48,169 at
  most; Anthropic's is about 1,600 (images are scaled to 1.15 megapixels) and up to about 4,800
  on its high-resolution models. Other binary payloads (documents, files, audio: base64 in
  `data`, `file_data` or a `data:` URL) are held at 2 tokens per byte of their text plus the
  image bound: a crude bound, generous for audio and most PDFs.

It never raises: any JSON shape is walked (iteratively, so depth is no concern) and what is not
text costs a token or two. Settlement still uses the provider's reported usage; `count_tokens`
is also the flagged estimate when that usage never came, and what the mock provider bills.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import orjson
from bpe_openai import _bindings  # the Rust encoder itself: the tiktoken-like wrapper refuses long inputs

O200K = "o200k_base"
CL100K = "cl100k_base"

# (per message, per request) framing, by whether the provider speaks OpenAI's format
MESSAGE_OVERHEAD = {True: 4, False: 6}
REQUEST_OVERHEAD = {True: 3, False: 10}
PART_OVERHEAD = 1
TOOL_OVERHEAD = 16
OPENAI_TOOLS_PROMPT = 32
ANTHROPIC_TOOLS_PROMPT = 500
CLAUDE_MARGIN = 2
BINARY_TOKENS_PER_BYTE = 2

_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "o1", "o3", "o4", "codex")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding")
_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_BINARY_KEYS = frozenset({"data", "file_data"})
_PAYLOAD_URL_KEYS = _BINARY_KEYS | {"url"}
_OPENAI_PROVIDERS = frozenset({"openai", "azure"})


def encoding_for_model(model: str) -> str | None:
    """The BPE an OpenAI model name tokenizes with, or None for a name this module does not know."""
    name = model.lower().removeprefix("ft:").rsplit("/", 1)[-1]
    if name.startswith(_O200K_PREFIXES):
        return O200K
    if name.startswith(_CL100K_PREFIXES):
        return CL100K
    return None


@functools.cache
def _encoder(encoding: str):
    return _bindings.tokenizer_for_encoding(encoding)


def count_tokens(text: str, *, encoding: str = O200K) -> int:
    """The number of tokens `text` encodes to (no special tokens: they are ordinary text here)."""
    if not text:
        return 0
    try:
        return _encoder(encoding).count(text)
    except UnicodeEncodeError:  # a lone surrogate: count it as the replacement character a provider would see
        return _encoder(encoding).count(_without_surrogates(text))


def encode(text: str, *, encoding: str = O200K) -> list[int]:
    """The token ids of `text` (UnicodeEncodeError for a lone surrogate)."""
    return _encoder(encoding).encode(text) if text else []


def split_tokens(text: str, *, encoding: str = O200K) -> list[str]:
    """`text` cut at token boundaries, joining back to it exactly.

    One piece per token, except that a token ending inside a UTF-8 character (CJK, emoji in
    cl100k) travels with the next ones until the character is whole.
    """
    if not text:
        return []
    encoder = _encoder(encoding)
    try:
        tokens = encoder.encode(text)
    except UnicodeEncodeError:
        return [text]
    pieces: list[str] = []
    pending: list[int] = []
    for token in tokens:
        pending.append(token)
        try:
            pieces.append(encoder.decode(pending))
        except ValueError:  # not a whole character yet
            continue
        pending = []
    if pending or "".join(pieces) != text:  # never expected; the pieces must join back to the text
        return [text]
    return pieces


def count_message_tokens(messages: list, *, encoding: str = O200K) -> int:
    """What the mock provider bills for a chat prompt: text parts plus 4 tokens per message and 2."""
    total = 0
    for message in messages:
        total += 4
        if not isinstance(message, dict):
            continue
        total += count_tokens(text_of(message.get("content")), encoding=encoding)
    return total + 2


def text_of(content: object) -> str:
    """The text of a message's content: the string, or its text blocks joined by a space."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


# --- the admission bound ---------------------------------------------------------------------------------


def prompt_token_bound(body: dict, *, provider: str, model: str) -> int:
    """At least as many input tokens as `body` can be billed for by `provider` serving `model`.

    `body` is a chat completion or a Messages request as the client sent it; the module docstring
    says what is counted and why each term is enough.
    """
    openai = provider in _OPENAI_PROVIDERS
    count = _text_bound(provider=provider, model=model)
    image = image_tokens_bound(provider=provider, model=model)
    if not isinstance(body, dict):
        return REQUEST_OVERHEAD[openai] + _walk(body, count, image, keys=True)
    total = REQUEST_OVERHEAD[openai]
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += MESSAGE_OVERHEAD[openai] + _walk(message, count, image, keys=False)
    elif messages is not None:
        total += MESSAGE_OVERHEAD[openai] + _walk(messages, count, image, keys=False)
    total += _walk(body.get("system"), count, image, keys=False)
    tools = body.get("tools")
    functions = body.get("functions")
    declared = [t for t in (tools, functions) if t]
    for extra in (*declared, body.get("tool_choice"), body.get("response_format")):
        if extra is not None:
            total += _json_bound(extra, count, image)
    if declared:
        total += OPENAI_TOOLS_PROMPT if openai else ANTHROPIC_TOOLS_PROMPT
        total += TOOL_OVERHEAD * sum(len(t) if isinstance(t, list) else 1 for t in declared)
    return total


def embedding_input_bound(value: object, *, provider: str, model: str) -> int:
    """At least as many tokens as an embeddings `input` can be billed for by `provider` serving `model`.

    OpenAI bills the tokens of the input alone, no framing: each string counted with the model's
    encoding (both encodings, the larger kept, for a name this module does not know), and an
    input already tokenized (an array of token ids) is as many tokens as it has ids.
    """
    count = _text_bound(provider=provider, model=model)
    if isinstance(value, str):
        return count(value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += count(item)
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1  # a token id
    return total


def image_tokens_bound(*, provider: str, model: str) -> int:
    """The most one image in a prompt can cost (the module docstring gives the figures)."""
    if provider not in _OPENAI_PROVIDERS:
        return 5_000
    name = model.lower()
    if encoding_for_model(name) is None or name.startswith(("gpt-4o-mini", "chatgpt-4o-mini")):
        return 48_200  # gpt-4o-mini's tiles are billed 33x; an unknown name may be it
    return 4_000


def _text_bound(*, provider: str, model: str) -> Callable[[str], int]:
    if provider in _OPENAI_PROVIDERS:
        encoding = encoding_for_model(model)
        if encoding is not None:
            return functools.partial(count_tokens, encoding=encoding)
        return lambda text: max(count_tokens(text, encoding=O200K), count_tokens(text, encoding=CL100K))
    return _claude_bound


def _claude_bound(text: str) -> int:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= 1:
        return size
    return min(size, CLAUDE_MARGIN * count_tokens(text, encoding=CL100K))


def _json_bound(value: object, count: Callable[[str], int], image: int) -> int:
    try:
        return count(orjson.dumps(value).decode())
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return _walk(value, count, image, keys=True)


def _walk(value: object, count: Callable[[str], int], image: int, *, keys: bool) -> int:
    """Every string in `value`, counted; images at `image`; binary payloads by their length."""
    total = 0
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += count(item)
        elif isinstance(item, dict):
            total += PART_OVERHEAD
            kind = item.get("type")
            if (isinstance(kind, str) and kind in _IMAGE_TYPES) or "image_url" in item:
                total += image
                continue
            for key, child in item.items():
                if keys and isinstance(key, str):
                    total += count(key)
                if isinstance(child, str) and _is_binary(key, child):
                    total += image + BINARY_TOKENS_PER_BYTE * len(child.encode("utf-8", "surrogatepass"))
                else:
                    stack.append(child)
        elif isinstance(item, list | tuple):
            total += len(item)
            stack.extend(item)
        elif isinstance(item, bool) or item is None:
            total += 1
        elif isinstance(item, int):
            total += 1 + item.bit_length() // 3  # at most one token per decimal digit, without str()
        elif isinstance(item, float):
            total += 1 + (len(repr(item)) if math.isfinite(item) else 1)
        else:
            total += 1
    return total


def _is_binary(key: object, value: str) -> bool:
    return (key in _BINARY_KEYS and len(value) > 256) or (key in _PAYLOAD_URL_KEYS and value.startswith("data:"))


def _without_surrogates(text: str) -> str:
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
