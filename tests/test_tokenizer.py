"""The token counts and the admission bound (gateway/tokenizer.py): the real BPE, and a bound that
is never below what the mock provider bills, whatever the text (long runs, CJK, emoji, odd shapes).
"""

import base64
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mock.server import billing_encoding, prompt_tokens
from gateway.tokenizer import (
    CL100K,
    O200K,
    count_message_tokens,
    count_tokens,
    encoding_for_model,
    prompt_token_bound,
    split_tokens,
)

ROOT = Path(__file__).resolve().parent.parent
_rng = random.Random(7)
CJK = "".join(chr(_rng.randint(0x4E00, 0x9FFF)) for _ in range(200_000))  # 200,000 distinct-ish Han characters

# (provider, catalog name, the upstream names the mock may be asked for behind it)
FAMILIES = [
    ("openai", "gpt-4", ["gpt-4"]),
    ("openai", "gpt-4o", ["gpt-4o"]),
    ("openai", "gpt-test", ["gpt-4o-mini-2024-07-18", "gpt-4", "anything"]),  # unknown: either encoding
    ("azure", "azure-gpt-test", ["gpt4o-prod-deployment", "gpt-35-turbo"]),
    ("anthropic", "claude-test", ["claude-haiku-4-5"]),
]


def billed(body: dict, upstream: str) -> int:
    """What the mock provider bills for `body`'s prompt when called as `upstream`."""
    return prompt_tokens(body.get("messages") or [], body.get("system"), encoding=billing_encoding(upstream))


# --- the real BPE ---------------------------------------------------------------------------------------


def test_it_counts_with_openais_bpe_not_a_run_of_letters_as_one_token():
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("a" * 300_000) == count_tokens("a" * 300_000, encoding=CL100K) == 37_500
    assert count_tokens(CJK, encoding=CL100K) > 2 * len(CJK) > count_tokens(CJK, encoding=O200K) > len(CJK)
    assert count_tokens("") == 0


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini-2024-07-18", O200K),
        ("gpt-4.1", O200K),
        ("gpt-5-nano", O200K),
        ("o3-mini", O200K),
        ("ft:gpt-4o-mini:acme::abc", O200K),
        ("gpt-4", CL100K),
        ("gpt-4-turbo", CL100K),
        ("gpt-3.5-turbo", CL100K),
        ("gpt-35-turbo", CL100K),
        ("gpt-test", None),
        ("claude-haiku-4-5", None),
    ],
)
def test_each_openai_model_family_has_its_encoding(model, encoding):
    assert encoding_for_model(model) == encoding


def test_a_lone_surrogate_is_counted_not_raised():
    assert count_tokens("a\ud800b") >= 2
    assert split_tokens("a\ud800b") == ["a\ud800b"]


# --- the bound ------------------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=300),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(1, 5_000)),  # long runs of one character
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=300),  # CJK
    st.text(alphabet=st.sampled_from("😀🎉👍🏽\u200d\ufe0f"), max_size=200),  # emoji and joiners
    st.text(alphabet=st.sampled_from(" \t\n\r\u3000\xa0"), max_size=500),  # whitespace
    st.text(alphabet=st.sampled_from("0123456789abcdef-_=/+ "), max_size=500),  # ids, hashes, base64
)
contents = st.one_of(texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=3))
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": contents}),
    min_size=1,
    max_size=4,
)
systems = st.one_of(st.none(), texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=messages, system=systems, family=st.sampled_from(FAMILIES))
def test_the_bound_is_never_below_what_the_provider_bills(messages, system, family):
    provider, model, upstreams = family
    body = {"model": model, "messages": messages}
    if system is not None:
        body["system"] = system

    bound = prompt_token_bound(body, provider=provider, model=model)

    for upstream in upstreams:
        assert bound >= billed(body, upstream)


@pytest.mark.parametrize(("provider", "model", "upstreams"), FAMILIES)
@pytest.mark.parametrize("text", ["a" * 300_000, CJK, "😀" * 50_000, "\t" * 100_000, "9" * 100_000])
def test_long_runs_and_cjk_are_held_at_what_they_cost(provider, model, upstreams, text):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}

    bound = prompt_token_bound(body, provider=provider, model=model)

    assert all(bound >= billed(body, upstream) for upstream in upstreams)
    if provider == "anthropic":  # no Claude tokenizer here: never above one token per byte (plus framing)
        assert bound <= len(text.encode()) + 32


@pytest.mark.parametrize(
    ("provider", "model", "most"),
    [("openai", "gpt-4o", 1.01), ("openai", "gpt-test", 1.02), ("anthropic", "claude-test", 2.0)],
)
@pytest.mark.parametrize("source", ["README.md", "docs/limits.md", "gateway/proxy.py"])
def test_ordinary_english_and_code_are_not_grossly_over_reserved(provider, model, most, source):
    text = (ROOT / source).read_text()
    body = {"model": model, "messages": [{"role": "user", "content": text}]}

    bound = prompt_token_bound(body, provider=provider, model=model)

    assert bound <= most * count_message_tokens(body["messages"], encoding=billing_encoding(model)) + 32


def test_an_image_costs_its_per_image_bound_not_its_payload():
    payload = base64.b64encode(random.Random(1).randbytes(300_000)).decode()
    openai_image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{payload}"}}
    claude_image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": payload}}
    text = {"type": "text", "text": "What is in this picture?"}

    gpt = prompt_token_bound(
        {"messages": [{"role": "user", "content": [text, openai_image]}]}, provider="openai", model="gpt-4o"
    )
    mini = prompt_token_bound(
        {"messages": [{"role": "user", "content": [text, openai_image]}]}, provider="openai", model="gpt-4o-mini"
    )
    claude = prompt_token_bound(
        {"messages": [{"role": "user", "content": [text, claude_image]}]}, provider="anthropic", model="claude-test"
    )

    assert 1_445 < gpt < 4_100
    assert 48_169 < mini < 48_300  # gpt-4o-mini bills image tiles 33x
    assert 1_600 < claude < 5_100


def test_tools_tool_calls_and_tool_results_are_counted():
    description = "Look up the weather of a city. " * 50
    tools = [{"type": "function", "function": {"name": "get_weather", "description": description}}]
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    with_tools = {**plain, "tools": tools}
    call = {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "x " * 500}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "y " * 500},
        ]
    }
    claude_result = {
        "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "z " * 500}]},
        ]
    }

    def bound(body, provider="openai"):
        return prompt_token_bound(body, provider=provider, model="gpt-4o" if provider == "openai" else "claude")

    assert bound(with_tools) - bound(plain) > count_tokens(description)
    assert bound({**plain, "tools": tools}, "anthropic") - bound(plain, "anthropic") > 346 + count_tokens(description)
    assert bound(call) > bound(plain) + 1_000
    assert bound(claude_result, "anthropic") > 500


odd_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(body=odd_json, provider=st.sampled_from(["openai", "azure", "anthropic", "other"]))
def test_any_shape_is_counted_and_never_raises(body, provider):
    shaped = body if not isinstance(body, dict) else {**body, "messages": body.get("messages", body)}

    assert prompt_token_bound(shaped, provider=provider, model="gpt-x") >= 0
    assert prompt_token_bound({"messages": [body], "system": body, "tools": body}, provider=provider, model="m") > 0


def test_deep_nesting_and_huge_numbers_do_not_raise():
    deep: object = "leaf"
    for _ in range(5_000):
        deep = {"content": [deep]}
    body = {"messages": [deep], "tools": [{"n": 10**5000}], "system": [{"text": 1e308}, float("nan")]}

    assert prompt_token_bound(body, provider="anthropic", model="claude") > 5_000
