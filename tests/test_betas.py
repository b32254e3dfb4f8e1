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
