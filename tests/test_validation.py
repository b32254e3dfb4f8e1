"""Bad input at the edge is a 400 naming the field, in the caller's wire format, never a 500.

The five inputs of issue 10 (item 5), on each endpoint where they apply, through the ASGI
application in this process. Each leaves exactly one usage record, `invalid_request` at zero
cost, and none says `internal_error`. And what validates reaches the provider exactly as sent.
"""

import asyncio
from decimal import Decimal

import httpx2 as httpx
import orjson
import pytest

from billing.models import UsageRecord
from gateway.providers import close_clients
from tenants.prompting import template_create_version

from .asgi import asgi_request, use_mock_upstreams

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def upstreams(settings, mock_llm):
    yield from use_mock_upstreams(settings, mock_llm)


CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
USER = {"role": "user", "content": "hello"}


def chat(**fields) -> dict:
    return {"model": "gpt-test", "messages": [USER], **fields}


def anthropic(**fields) -> dict:
    return {"model": "claude-test", "max_tokens": 20, "messages": [USER], **fields}


def send(path: str, key: str, body: dict | bytes, **kwargs) -> tuple[int, dict, dict]:
    async def scenario():
        try:
            raw = body if isinstance(body, bytes) else orjson.dumps(body)
            return await asgi_request(path, key=key, body=raw, **kwargs)
        finally:
            await close_clients()

    status, headers, content = asyncio.run(scenario())
    assert headers["content-type"].startswith("application/json"), content[:300]
    return status, headers, orjson.loads(content) if content else {}


def assert_refused(path: str, status: int, headers: dict, answer: dict, param: str) -> None:
    """400, the field named, the caller's wire format; one zero-cost `invalid_request` record."""
    assert status == 400, answer
    if path == MESSAGES:
        assert answer["type"] == "error"
        assert answer["error"]["type"] == "invalid_request_error"
        message = answer["error"]["message"]
    else:
        assert answer["error"]["type"] == "invalid_request_error"
        assert answer["error"]["param"] == param
        assert answer["error"]["code"] == "invalid_request"
        message = answer["error"]["message"]
    assert f"`{param}`" in message
    rec = UsageRecord.objects.get(request_id=headers["x-request-id"])
    assert (rec.status_code, rec.error_type, rec.cost) == (400, "invalid_request", Decimal(0))
    assert not UsageRecord.objects.filter(error_type="internal_error").exists()


# Issue 10, item 5: each of these reached a 500 and an `internal_error` record.
BAD_BODIES = [
    pytest.param(CHAT, chat(messages=[{"role": ["user"], "content": "x"}]), "messages[0].role", id="chat-role-list"),
    pytest.param(CHAT, chat(messages=[{"role": {"r": 1}, "content": "x"}]), "messages[0].role", id="chat-role-dict"),
    pytest.param(
        MESSAGES, anthropic(messages=[{"role": ["user"], "content": "x"}]), "messages[0].role", id="msg-role-list"
    ),
    pytest.param(
        MESSAGES, anthropic(messages=[{"role": {"r": 1}, "content": "x"}]), "messages[0].role", id="msg-role-dict"
    ),
    pytest.param(MESSAGES, anthropic(stream_options="x"), "stream_options", id="msg-stream-options-str"),
    pytest.param(MESSAGES, anthropic(stream_options=5), "stream_options", id="msg-stream-options-int"),
    pytest.param(MESSAGES, anthropic(stream_options=[1]), "stream_options", id="msg-stream-options-list"),
    pytest.param(
        MESSAGES, anthropic(stream=True, stream_options="x"), "stream_options", id="msg-stream-options-streamed"
    ),
    pytest.param(CHAT, chat(stream=True, stream_options="x"), "stream_options", id="chat-stream-options-str"),
    pytest.param(MESSAGES, anthropic(system=[{"type": "text", "text": 5}]), "system[0].text", id="msg-system-text-int"),
    pytest.param(
        CHAT,
        chat(messages=[{"role": "system", "content": [{"type": "text", "text": 5}]}, USER]),
        "messages[0].content[0].text",
        id="chat-system-text-int",
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD_BODIES)
def test_the_bad_bodies_of_issue_10_are_400_naming_the_field(upstreams, catalog, alice_key, path, body, param):
    assert_refused(path, *send(path, alice_key, body), param)


def test_a_usage_period_beyond_the_calendar_is_400_not_an_overflow(upstreams, alice_key):
    async def scenario(query: bytes):
        return await asgi_request("/v1/usage", method="GET", key=alice_key, query=query)

    for query, param in [
        (b"start=9999-12-31&end=9999-12-31", "start"),
        (b"start=9999-12-30&end=9999-12-31", "end"),
        (b"start=0000-01-01&end=0001-01-01", "start"),
        (b"start=2024-02-30&end=2024-03-01", "start"),
        (b"start=%EF%BC%92024-01-01&end=2024-01-01", "start"),  # a full-width digit
    ]:
        status, headers, content = asyncio.run(scenario(query))
        assert (status, headers["content-type"]) == (400, "application/json"), content[:300]
        assert orjson.loads(content)["error"]["param"] == param
    # The edges of the calendar that Python and PostgreSQL can both hold are answered.
    for query in (b"start=9999-12-30&end=9999-12-30", b"start=0001-01-01&end=0001-01-01"):
        status, _, content = asyncio.run(scenario(query))
        assert status == 200, content[:300]
        assert orjson.loads(content)["totals"]["requests"] == 0


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        (CHAT, chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "a string or an array"),
        (CHAT, chat(messages=[{"role": "user", "content": [{"type": 5}]}]), "messages[0].content[0].type", "string"),
        (CHAT, chat(max_tokens=True), "max_tokens", "must be an integer (got a boolean)"),
        (CHAT, chat(max_tokens=2**40), "max_tokens", "at most 2147483647"),
        (CHAT, chat(temperature="hot"), "temperature", "must be a number (got a string)"),
        (CHAT, chat(stop=5), "stop", "a string or an array of strings"),
        (CHAT, chat(tool_choice={"type": "function"}), "tool_choice.function", "is required"),
        (CHAT, chat(model=["gpt-test"]), "model", "must be a string (got an array)"),
        (CHAT, {"model": "gpt-test"}, "messages", "non-empty array"),
        (MESSAGES, anthropic(max_tokens=None), "max_tokens", "must be an integer (got null)"),
        (MESSAGES, anthropic(temperature=1.5), "temperature", "at most 1"),
        (
            MESSAGES,
            anthropic(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": 1}]}]),
            "messages[0].content[0].tool_use_id",
            "must be a string",
        ),
        (MESSAGES, anthropic(template={"version": 1}), "template.name", "is required"),
    ],
)
def test_a_wrong_type_anywhere_names_its_path_and_what_is_expected(
    upstreams, catalog, alice_key, path, body, param, words
):
    status, headers, answer = send(path, alice_key, body)
    assert_refused(path, status, headers, answer, param)
    message = answer["error"]["message"]
    assert words in message, message


def test_a_system_turn_in_messages_is_refused_in_anthropics_own_words(upstreams, catalog, alice_key):
    """Claude Code sends mid-conversation "system" turns and drops them only when the 400 reads like
    the provider's (tests/test_coding_agents.py runs it)."""
    system_turn = {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    status, headers, answer = send(MESSAGES, alice_key, anthropic(messages=[USER, system_turn]))
    assert_refused(MESSAGES, status, headers, answer, "messages[1].role")
    assert answer["error"]["message"] == (
        '`messages[1].role`: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
        'not "system" as an input message role.'
    )


def test_an_error_in_the_callers_own_messages_names_its_own_index_after_a_template(
    upstreams, catalog, alice, alice_key
):
    template_create_version(tenant_id=alice.id, name="greet", messages=[{"role": "system", "content": "Be {{tone}}."}])
    body = chat(template={"name": "greet", "variables": {"tone": "brief"}}, messages=[USER, {"role": 5}])
    assert_refused(CHAT, *send(CHAT, alice_key, body), "messages[1].role")


def test_what_validates_is_forwarded_exactly_as_sent(upstreams, catalog, alice_key):
    """Unknown fields (a provider's newest), nested extras and block types the gateway does not
    know reach a same-family upstream unchanged: validation reads the dict, never rewrites it."""
    httpx.delete(f"{upstreams}/_mock/requests")
    body = chat(
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Be brief.", "x_hint": {"a": [1, None]}}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "future_part", "blob": 1.5}]},
        ],
        temperature=0.2,
        stop=["\n\n"],
        future_option={"deep": [{"x": "é"}]},
        metadata={"team": "a"},
    )
    status, _, answer = send(CHAT, alice_key, body)
    assert status == 200, answer
    received = httpx.get(f"{upstreams}/_mock/requests").json()[-1]["body"]
    assert received == {**body, "model": "gpt-4o-mini-2024-07-18"}


# --- found by the fuzz test (tests/test_fuzz.py) ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat(stream=None)),
        (MESSAGES, anthropic(stream=None)),
        (MESSAGES, anthropic(model="gpt-test", stream=None)),  # translated
        (CHAT, chat(template=None)),
    ],
)
def test_null_stream_and_template_mean_absent(upstreams, catalog, alice_key, path, body):
    """`"stream": null` was stored as a NULL `streamed` (an IntegrityError: 500); `"template":
    null` failed on its missing name (500)."""
    status, headers, answer = send(path, alice_key, body)
    assert status == 200, answer
    rec = UsageRecord.objects.get(request_id=headers["x-request-id"])
    assert (rec.status_code, rec.streamed) == (200, False)


@pytest.mark.parametrize("path", ["/v1/models", "/v1/usage"])
def test_a_post_to_a_get_endpoint_is_405_in_wire_format_not_a_csrf_page(upstreams, alice_key, path):
    status, _, answer = send(path, alice_key, b"{}")
    assert status == 405
    assert answer["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/logs", "/v1/models", CHAT, MESSAGES])
def test_a_query_string_that_is_not_utf8_is_a_400_in_wire_format(upstreams, alice_key, path):
    method = "POST" if path in (CHAT, MESSAGES) else "GET"
    status, _, answer = send(path, alice_key, orjson.dumps(chat()), method=method, query=b"start=\x80")
    assert status == 400
    if path == MESSAGES:
        assert answer["error"]["type"] == "invalid_request_error"
    else:
        assert answer["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("path", "method", "family"),
    [
        ("/v1/chat/completions", "POST", "openai"),  # the hot path's own handler
        ("/v1/messages", "POST", "anthropic"),
        ("/v1/models", "GET", "openai"),  # Django's stack
    ],
)
def test_a_host_outside_allowed_hosts_is_a_400_in_the_callers_format(alice_key, path, method, family):
    status, headers, raw = asyncio.run(
        asgi_request(path, method=method, body=b"{}", key=alice_key, host="attacker.example")
    )
    assert status == 400
    answer = orjson.loads(raw)  # JSON, not Django's HTML page
    if family == "anthropic":
        assert answer["type"] == "error"
        assert answer["error"]["type"] == "invalid_request_error"
    else:
        assert answer["error"]["code"] == "invalid_request"
