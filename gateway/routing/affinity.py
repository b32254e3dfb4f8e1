"""Prompt-cache affinity (`affinity: "prefix"` of a catalog model; docs/routing.md#prompt-cache-affinity).

A provider caches a prompt's prefix per deployment (per account and endpoint): a request whose
prompt starts like a recent one is billed the cached part at the cached-input price and answered
sooner, but only where the prefix was seen. So a tenant's requests that share their first N
tokens (`GATEWAY_AFFINITY_PREFIX_TOKENS`) go to one deployment, chosen by rendezvous hashing of
(tenant id, prefix digest) over the deployments the strategy would use: the same one in every
gateway process, with no shared state, and when a deployment is added or removed only the
prefixes that hashed to it move. That deployment goes first; the strategy's order follows (a
deployment out of rotation or at its quota is skipped by the plan as usual, and the next one answers).

The prefix: the first N tokens of the serialized system prompt and messages (`instructions` and
`input` for the Responses API), counted with the model family's tokenizer (the model's own BPE for
OpenAI names, cl100k_base standing in for Claude's), on 6 x N characters of text, twice that when
they hold fewer than N tokens, up to `CHARS_PER_TOKEN_CAP` x N (about 0.2 ms for N = 1024 on
English text). A prompt shorter than N tokens has no affinity: a provider caches nothing below
about 1024 tokens, and the strategy's order is as good.
"""

import hashlib
import math
import struct

import orjson
from django.conf import settings

from gateway.registry import DeploymentView
from gateway.tokenizer import CL100K, O200K, encode, encoding_for_model

# The serialized prompt is cut at this many characters per wanted token before it is encoded: a
# token of ordinary text is about 4 characters, so this bounds the work (1024 tokens: 16 KiB of
# text) without cutting into the first N tokens of any realistic prompt. A text whose first
# characters hold fewer tokens than that (a long run of one character) is keyed on those characters.
CHARS_PER_TOKEN_CAP = 16
FIRST_CHARS_PER_TOKEN = 6  # the first try: enough for English text and its JSON (about 4 per token)
_OPENAI_PROVIDERS = frozenset({"openai", "azure"})


def prefix_tokens() -> int:
    """How many leading tokens two prompts must share to go to the same deployment (0: affinity off)."""
    return max(0, int(getattr(settings, "GATEWAY_AFFINITY_PREFIX_TOKENS", 1024)))


def prefix_digest(body: dict, *, provider: str, model: str, tokens: int) -> bytes | None:
    """A digest of the first `tokens` tokens of the prompt in `body`, or None when it has fewer."""
    if tokens <= 0 or not isinstance(body, dict):
        return None
    system = body.get("system", body.get("instructions"))
    messages = body.get("messages", body.get("input"))
    if system is None and messages is None:
        return None
    try:
        text = orjson.dumps([system, messages]).decode()
    except (TypeError, orjson.JSONEncodeError):  # not JSON (a lone surrogate): no affinity
        return None
    encoding = (encoding_for_model(model) or O200K) if provider in _OPENAI_PROVIDERS else CL100K
    chars = tokens * FIRST_CHARS_PER_TOKEN
    while True:  # encode a head of the text long enough for N tokens, growing it up to the cap
        head = text[:chars]
        ids = encode(head, encoding=encoding)  # orjson refused lone surrogates: the text encodes
        if len(ids) > tokens or len(head) == len(text) or chars >= tokens * CHARS_PER_TOKEN_CAP:
            break
        chars = min(chars * 2, tokens * CHARS_PER_TOKEN_CAP)
    if len(ids) >= tokens:
        material = struct.pack(f"<{tokens}I", *ids[:tokens])
    elif len(text) > len(head):  # the cap was reached first: the head is the shared prefix
        material = head.encode()
    else:
        return None
    return hashlib.blake2b(material, digest_size=16).digest()


def _score(tenant_id: int, digest: bytes, deployment: DeploymentView, *, weighted: bool) -> float:
    raw = hashlib.blake2b(struct.pack("<qq", tenant_id, deployment.id) + digest, digest_size=8).digest()
    unit = (int.from_bytes(raw, "big") + 1) / (2**64 + 1)  # uniform in (0, 1)
    if not weighted:
        return unit
    # Weighted rendezvous: the top score is deployment i with probability weight_i / sum of weights.
    return -deployment.weight / math.log(unit)


def pick(deployments: list[DeploymentView], *, tenant_id: int, digest: bytes, weighted: bool) -> DeploymentView | None:
    """The deployment that (tenant, prefix) hashes to among `deployments` (for `weighted`, by weight,
    over those of weight above 0: the ones the strategy sends traffic to)."""
    candidates = [d for d in deployments if d.weight > 0] if weighted else deployments
    if not candidates:
        return None
    return max(candidates, key=lambda d: (_score(tenant_id, digest, d, weighted=weighted), -d.id))


def first(ordered: list[DeploymentView], chosen: DeploymentView | None) -> list[DeploymentView]:
    """`ordered` with `chosen` moved to the front, the rest in the strategy's order."""
    if chosen is None or not ordered or ordered[0] is chosen:
        return ordered
    return [chosen, *(d for d in ordered if d is not chosen)]


def apply(call, deployments: list[DeploymentView], ordered: list[DeploymentView]) -> list[DeploymentView]:
    """The strategy's `ordered` deployments with the affine one first, when the model asks for it."""
    model = call.model
    if model.affinity != "prefix" or len(deployments) < 2:
        return ordered
    digest = prefix_digest(call.body, provider=model.provider, model=model.name, tokens=prefix_tokens())
    if digest is None:
        return ordered
    chosen = pick(deployments, tenant_id=call.caller.tenant.id, digest=digest, weighted=model.routing == "weighted")
    return first(ordered, chosen)
