"""The `anthropic-beta` header: which betas a caller may ask for, and what becomes of them (issue 12).

A beta is a name in the comma-separated `anthropic-beta` request header. The gateway forwards
the header to Anthropic deployments, as sent, on /v1/messages and /v1/messages/count_tokens.
It never drops a beta silently: a name it does not know is a 400 naming the header, so that a
typo (or a beta the gateway was never told of) shows at once instead of switching a feature off.

Known betas are
- the names the installed anthropic SDK lists (`anthropic.types.AnthropicBetaParam`, read by
  `gateway.providers.anthropic.sdk_betas`): an SDK upgrade brings its new names along;
- `BUILTIN_BETAS` below: current names the SDK's list lacks, among them every beta Claude Code
  sends (docs/anthropic.md);
- the operator's own, `GATEWAY_ANTHROPIC_BETAS` (comma-separated), for a beta newer than both.

A model served by an OpenAI or Azure deployment (the request is translated): the betas are
accepted and not sent anywhere, since OpenAI has no such header. That changes nothing the
caller can rely on: a header-only beta tunes Anthropic's own serving (longer outputs, a larger
context window, interleaved thinking, fine-grained tool streaming, token-efficient tools ...),
which an OpenAI model does not have either way, and the body fields and block types that a
beta unlocks (`context_management`, `container`, `mcp_servers`, server tools, `thinking`) are
refused by the translation with a 400 naming the field (gateway/translate.py). A client that
always sends its betas (Claude Code does) therefore works with a GPT model too.
"""

import functools

from django.conf import settings

from .errors import bad_request
from .providers.anthropic import sdk_betas

HEADER = "anthropic-beta"

# Current betas that anthropic 2.14's AnthropicBetaParam does not list. Claude Code sends the
# first group (docs/anthropic.md lists what each installed version was seen sending).
BUILTIN_BETAS = frozenset(
    {
        # Claude Code 2.1 (what it was seen sending, and the other names in its binary)
        "claude-code-20250219",
        "oauth-2025-04-20",
        "fine-grained-tool-streaming-2025-05-14",
        "interleaved-thinking-2025-05-14",
        "context-management-2025-06-27",
        "context-1m-2025-08-07",
        "tool-search-tool-2025-10-19",
        "effort-2025-11-24",
        "advanced-tool-use-2025-11-20",
        "mid-conversation-system-2026-04-07",
        "per-turn-control-2026-07-01",
        "timing-2026-09-09",
        "program-use-case-ids-2026-09-17",
        # server tools and older feature betas still accepted by the API
        "web-search-2025-03-05",
        "web-fetch-2025-09-10",
        "search-results-2025-06-09",
        "code-execution-2025-08-25",
        "computer-use-2025-01-24",
        "token-counting-2024-11-01",
        "prompt-caching-2024-07-31",
        "max-tokens-3-5-sonnet-2024-07-15",
    }
)


@functools.cache
def _builtin() -> frozenset[str]:
    return BUILTIN_BETAS | sdk_betas()


def known_betas() -> frozenset[str]:
    """Every beta a caller may name: built in, the SDK's, and the operator's."""
    return _builtin() | frozenset(settings.GATEWAY_ANTHROPIC_BETAS)


def parse_betas(value: str | None) -> tuple[str, ...]:
    """The betas of an `anthropic-beta` header value (Django joins repeated headers with a comma),
    in order, without repeats; a GatewayError 400 naming the header for an unknown one."""
    if not value:
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    known = known_betas()
    unknown = [name for name in names if name not in known]
    if unknown:
        shown = ", ".join(f"`{name}`" for name in unknown[:5])
        raise bad_request(
            f"The `{HEADER}` header names a beta this gateway does not know: {shown}. "
            "Ask the operator to add it to GATEWAY_ANTHROPIC_BETAS.",
            param=HEADER,
            code="unknown_beta",
        )
    return names
