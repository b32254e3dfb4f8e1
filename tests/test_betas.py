"""The `anthropic-beta` allow-list (gateway/betas.py): built in, the SDK's names, the operator's."""

import pytest

from gateway.betas import BUILTIN_BETAS, known_betas, parse_betas
from gateway.errors import GatewayError
from gateway.providers.anthropic import sdk_betas


def test_every_beta_the_sdk_lists_is_known():
    assert "context-management-2025-06-27" in sdk_betas()
    assert sdk_betas() <= known_betas()
    assert BUILTIN_BETAS <= known_betas()


def test_a_header_is_split_trimmed_and_deduplicated_in_order():
    header = " claude-code-20250219, interleaved-thinking-2025-05-14,,claude-code-20250219 "
    assert parse_betas(header) == ("claude-code-20250219", "interleaved-thinking-2025-05-14")
    assert parse_betas("") == ()
    assert parse_betas(None) == ()


def test_an_unknown_beta_is_a_400_naming_the_header():
    with pytest.raises(GatewayError) as refused:
        parse_betas("claude-code-20250219,made-up-2030-01-01")
    error = refused.value
    assert (error.status, error.code, error.param) == (400, "unknown_beta", "anthropic-beta")
    assert "`made-up-2030-01-01`" in error.message
    assert "claude-code" not in error.message


def test_the_operator_extends_the_list(settings):
    with pytest.raises(GatewayError):
        parse_betas("our-private-beta-2026-12-01")
    settings.GATEWAY_ANTHROPIC_BETAS = ["our-private-beta-2026-12-01"]
    assert parse_betas("our-private-beta-2026-12-01,claude-code-20250219") == (
        "our-private-beta-2026-12-01",
        "claude-code-20250219",
    )


# What Claude Code 2.1.337 was seen sending in one header, and the other betas its binary names.
CLAUDE_CODE_HEADER = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,"
    "effort-2025-11-24"
)
CLAUDE_CODE_OTHERS = (
    "mid-conversation-system-2026-04-07",
    "per-turn-control-2026-07-01",
    "timing-2026-09-09",
    "inline-tools-2026-09-15",
    "server-side-fallback-2026-06-01",
    "server-side-fallback-2026-07-01",
    "program-use-case-ids-2026-09-17",
    "fallback-credit-2026-06-01",
)


def test_every_beta_claude_code_sends_passes():
    assert len(parse_betas(CLAUDE_CODE_HEADER)) == 7
    assert parse_betas(",".join(CLAUDE_CODE_OTHERS)) == CLAUDE_CODE_OTHERS
