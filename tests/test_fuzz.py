"""Thousands of generated requests at every tenant endpoint: none may be answered with a 5xx.

Hypothesis builds bodies of the right shape (what the SDKs send: roles, content blocks, tools,
templates, every sampling parameter) and then breaks each at one position: a wrong type, null, a
huge integer, nested junk, unicode with NUL, a missing or an unknown key. Random JSON and random
bytes are thrown in too, and the query strings and path segments of the GET endpoints.

In process, through the ASGI application (tests/asgi.py): a request costs about a millisecond
instead of an HTTP round trip, so the whole file runs in well under a minute. What validates goes
upstream for real: the mock provider is every provider, so a body that passes the edge is also
translated (chat -> Anthropic, messages -> OpenAI), estimated, admitted and metered, and any of
those steps that trips on it shows up as a 5xx here. Every refusal must be JSON in the caller's
wire format, and no usage record may say 5xx.
"""

import asyncio
import copy
import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing.models import UsageRecord
from gateway.metering import drain_pending
from gateway.providers import close_clients
from tenants.prompting import template_create_version

from .asgi import asgi_request, use_mock_upstreams

pytestmark = pytest.mark.django_db(transaction=True)

_FUZZ = hypothesis_settings(
    deadline=None,
    database=None,  # nothing written to the repository; a failure prints its reproduction blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def fuzz(examples: int) -> hypothesis_settings:
    return hypothesis_settings(_FUZZ, max_examples=examples)


CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
RESPONSES = "/v1/responses"
MODELS = ["gpt-test", "claude-test", "azure-gpt-test"]  # the `catalog` fixture: both families, translated too


@pytest.fixture
def fuzz_world(settings, mock_llm, catalog, alice, alice_key):
    """Alice with a template, every provider the mock, and one event loop for the whole test."""
    template_create_version(
        tenant_id=alice.id, name="greet", messages=[{"role": "system", "content": "Greet {{name}} briefly."}]
    )
    generator = use_mock_upstreams(settings, mock_llm)
    next(generator)
    loop = asyncio.new_event_loop()
    yield loop, alice_key
    loop.run_until_complete(drain_pending())
    loop.run_until_complete(close_clients())
    loop.close()
    next(generator, None)
    assert not UsageRecord.objects.filter(status_code__gte=500).exists()
    assert not UsageRecord.objects.filter(error_type="internal_error").exists()


def check(loop, key: str, path: str, *, method: str = "POST", body: bytes = b"", query: bytes = b"") -> int:
    status, headers, content = loop.run_until_complete(
        asgi_request(path, method=method, body=body, query=query, key=key)
    )
    assert status < 500, (status, content[:500])
    if status >= 400 and method != "HEAD":
        assert headers.get("content-type") == "application/json", (status, content[:300])
        answer = json.loads(content)
        if path.startswith(MESSAGES):
            assert answer["type"] == "error", answer
            assert set(answer["error"]) == {"type", "message"}, answer
        else:
            assert set(answer["error"]) == {"message", "type", "param", "code"}, answer
    return status


def dumps(body) -> bytes:
    # The standard library, not orjson: it writes integers beyond 64 bits, as a hostile client can.
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


# --- building blocks -------------------------------------------------------------------------

text = st.text(max_size=12)
short = st.text(st.characters(codec="utf-8"), max_size=8)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
junk = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short, inner, max_size=3), max_leaves=6
)
json_values = junk


def maybe(strategy):
    return st.none() | strategy


def objects(required: dict, optional: dict | None = None):
    return st.fixed_dictionaries(required, optional=optional or {})


URLS = st.sampled_from(
    ["https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo=", "data:text/plain;base64,aGk=", "ftp://x", ""]
)
openai_part = st.one_of(
    objects({"type": st.just("text"), "text": text}),
    objects({"type": st.just("image_url"), "image_url": objects({"url": URLS}, {"detail": st.just("low")})}),
    objects(
        {
            "type": st.just("file"),
            "file": objects({}, {"file_data": st.just("data:application/pdf;base64,JVBE"), "file_id": text}),
        }
    ),
    objects(
        {"type": st.just("input_audio"), "input_audio": objects({"data": st.just("AAAA"), "format": st.just("wav")})}
    ),
    objects({"type": st.just("refusal"), "refusal": text}),
    objects({"type": st.just("future_part")}, {"x": junk}),
)
openai_content = text | st.lists(openai_part, max_size=3)
tool_call = objects(
    {
        "id": st.just("call_1"),
        "type": st.just("function"),
        "function": objects({"name": st.just("f"), "arguments": st.sampled_from(["{}", '{"a": 1}', "[]", "nope"])}),
    }
)
user_message = objects({"role": st.just("user"), "content": openai_content})
openai_message = st.one_of(
    user_message,
    user_message,
    objects({"role": st.sampled_from(["system", "developer", "user"]), "content": openai_content}, {"name": text}),
    objects(
        {"role": st.just("assistant")},
        {"content": maybe(openai_content), "tool_calls": st.lists(tool_call, max_size=2), "refusal": text},
    ),
    objects({"role": st.just("tool"), "content": openai_content, "tool_call_id": st.just("call_1")}),
    objects({"role": st.just("function"), "name": st.just("f"), "content": text}),
)
function_tool = objects(
    {
        "type": st.just("function"),
        "function": objects(
            {"name": st.sampled_from(["f", "g"])},
            {
                "description": text,
                "parameters": st.just({"type": "object", "properties": {"a": {"type": "string"}}}),
                "strict": st.booleans(),
            },
        ),
    }
)
good_template = objects({"name": st.just("greet"), "variables": objects({"name": text})}, {"version": st.just(1)})
template = good_template | good_template | objects({"name": st.sampled_from(["greet", "nope"])}, {"variables": junk})


@st.composite
def chat_bodies(draw):
    body = draw(
        objects(
            {"model": st.sampled_from(MODELS), "messages": st.lists(openai_message, min_size=1, max_size=4)},
            {
                "max_tokens": st.integers(1, 40),
                "max_completion_tokens": st.integers(1, 40),
                "temperature": st.floats(0, 2),
                "top_p": st.floats(0, 1),
                "n": st.just(1),
                "stop": text | st.lists(text, max_size=3),
                "stream": st.booleans(),
                "seed": st.integers(-(2**63), 2**63 - 1),
                "user": text,
                "metadata": st.dictionaries(short, text, max_size=2),
                "tools": st.lists(function_tool, max_size=2),
                "tool_choice": st.sampled_from(
                    ["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]
                ),
                "parallel_tool_calls": st.booleans(),
                "response_format": st.sampled_from(
                    [
                        {"type": "text"},
                        {"type": "json_object"},
                        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
                    ]
                ),
                "presence_penalty": st.floats(-2, 2),
                "logprobs": st.booleans(),
                "store": st.booleans(),
                "template": template,
            },
        )
    )
    if body.get("stream") and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return with_future_field(draw, body)


def with_future_field(draw, body: dict) -> dict:
    """Now and then a parameter no provider has yet: same-family upstreams get it, translation refuses it."""
    if draw(st.integers(0, 4)) == 0:
        body["x_future_option"] = draw(junk)
    return body


source = st.one_of(
    objects(
        {
            "type": st.just("base64"),
            "media_type": st.sampled_from(["image/png", "application/pdf", "text/x"]),
            "data": st.just("iVBORw0KGgo="),
        }
    ),
    objects({"type": st.just("url"), "url": URLS}),
    objects({"type": st.just("text"), "media_type": st.just("text/plain"), "data": text}),
    objects({"type": st.just("file"), "file_id": text}),
)
text_block = objects({"type": st.just("text"), "text": text}, {"cache_control": st.just({"type": "ephemeral"})})
anthropic_block = st.one_of(
    text_block,
    objects({"type": st.just("image"), "source": source}),
    objects({"type": st.just("document"), "source": source}),
    objects(
        {
            "type": st.just("tool_use"),
            "id": st.just("tu_1"),
            "name": st.just("f"),
            "input": st.dictionaries(short, junk, max_size=2),
        }
    ),
    objects(
        {"type": st.just("tool_result"), "tool_use_id": st.just("tu_1")},
        {"content": text | st.lists(text_block, max_size=2), "is_error": st.booleans()},
    ),
    objects({"type": st.just("thinking"), "thinking": text, "signature": text}),
    objects({"type": st.just("future_block")}, {"x": junk}),
)
anthropic_message = objects(
    {"role": st.sampled_from(["user", "assistant"]), "content": text | st.lists(anthropic_block, max_size=3)}
)
anthropic_tool = objects(
    {"name": st.sampled_from(["f", "g"]), "input_schema": st.just({"type": "object"})}, {"description": text}
)


@st.composite
def messages_bodies(draw):
    body = draw(
        objects(
            {
                "model": st.sampled_from(MODELS),
                "max_tokens": st.integers(1, 40),
                "messages": st.lists(anthropic_message, min_size=1, max_size=4),
            },
            {
                "system": text | st.lists(text_block, max_size=2),
                "stream": st.booleans(),
                "stop_sequences": st.lists(text, max_size=3),
                "temperature": st.floats(0, 1),
                "top_p": st.floats(0, 1),
                "top_k": st.integers(0, 50),
                "metadata": objects({}, {"user_id": text}),
                "tools": st.lists(anthropic_tool, max_size=2),
                "tool_choice": st.sampled_from(
                    [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "f"}]
                ),
                "thinking": st.sampled_from([{"type": "disabled"}, {"type": "disabled"}, {"type": "enabled"}]),
                "template": template,
            },
        )
    )
    return with_future_field(draw, body)


@st.composite
def count_tokens_bodies(draw):
    """A Messages body without what only generation takes (count_tokens refuses those)."""
    body = draw(messages_bodies())
    for name in ("max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k", "metadata", "template"):
        if draw(st.integers(0, 29)):  # now and then one is left in, to be refused
            body.pop(name, None)
    return body


responses_part = st.one_of(
    objects({"type": st.just("input_text"), "text": text}),
    objects({"type": st.just("input_image"), "image_url": URLS}, {"detail": st.sampled_from(["low", "auto"])}),
    objects(
        {"type": st.just("input_file"), "file_data": st.just("data:application/pdf;base64,JVBE")}, {"filename": text}
    ),
    objects({"type": st.just("output_text"), "text": text}),
)
responses_item = st.one_of(
    objects(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer"]),
            "content": text | st.lists(responses_part, max_size=3),
        },
        {"type": st.just("message"), "id": st.just("msg_fuzz")},
    ),
    objects(
        {
            "type": st.just("function_call"),
            "call_id": st.just("call_1"),
            "name": st.just("lookup"),
            "arguments": st.just('{"q": "x"}'),
        }
    ),
    objects({"type": st.just("function_call_output"), "call_id": st.just("call_1"), "output": text}),
    objects({"type": st.just("reasoning"), "summary": st.just([])}, {"encrypted_content": text}),
)
responses_tool = objects(
    {"type": st.just("function"), "name": st.sampled_from(["lookup", "get"])},
    {
        "description": text,
        "parameters": st.just({"type": "object", "properties": {"q": {"type": "string"}}}),
        "strict": st.booleans(),
    },
)


@st.composite
def responses_bodies(draw):
    """What `client.responses.create` sends (previous_response_id is unknown here: a 404)."""
    body = draw(
        objects(
            {"model": st.sampled_from(MODELS), "input": text | st.lists(responses_item, min_size=1, max_size=4)},
            {
                "instructions": text,
                "tools": st.lists(responses_tool, max_size=2),
                "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "name": "lookup"}]),
                "max_output_tokens": st.integers(1, 64),
                "temperature": st.floats(0, 2),
                "top_p": st.floats(0, 1),
                "store": st.booleans(),
                "stream": st.booleans(),
                "reasoning": st.just({"effort": "low"}),
                "text": st.just({"format": {"type": "text"}}),
                "include": st.just(["reasoning.encrypted_content"]),
                "parallel_tool_calls": st.booleans(),
                "metadata": st.dictionaries(short, short, max_size=2),
                "previous_response_id": st.just("resp_unknown"),
                "user": text,
                "prompt_cache_key": text,
            },
        )
    )
    return with_future_field(draw, body)


def _slots(value, slots: list) -> list:
    """Every (container, key) of a JSON value: the positions a mutation may hit."""
    if isinstance(value, dict):
        for key, item in value.items():
            slots.append((value, key))
            _slots(item, slots)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            slots.append((value, index))
            _slots(item, slots)
    return slots


NEAR_MISSES = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        2**31,
        2**64,
        1e300,
        -0.0,
        "",
        "\x00",
        "x" * 300,
        [],
        {},
        [None],
        {"": None},
        "user",
        "text",
        1.5,
    ]
)


@st.composite
def broken(draw, bodies):
    """A body of the right shape, broken at one position (or, now and then, left intact)."""
    body = copy.deepcopy(draw(bodies))  # `st.just` values are shared between examples: never mutate them
    slots = _slots(body, [])
    action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "keep", "keep"]))
    if action == "keep" or not slots:
        return body
    container, key = draw(st.sampled_from(slots))
    if action == "replace":
        container[key] = draw(NEAR_MISSES | junk)
    elif action == "delete":
        if isinstance(container, dict):
            del container[key]
        else:
            container.pop(key)
    else:
        target = container[key] if isinstance(container[key], dict | list) else container
        if isinstance(target, dict):
            target[draw(short)] = draw(junk)
        else:
            target.append(draw(junk))
    return body


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "bodies"),
    [
        (CHAT, chat_bodies()),
        (MESSAGES, messages_bodies()),
        (COUNT_TOKENS, count_tokens_bodies()),
        (RESPONSES, responses_bodies()),
    ],
    ids=["chat", "messages", "count_tokens", "responses"],
)
def test_completion_endpoints_never_answer_5xx(fuzz_world, path, bodies):
    loop, key = fuzz_world
    statuses: list[int] = []

    @fuzz(1000)
    @given(broken(bodies))
    def run(body):
        statuses.append(check(loop, key, path, body=dumps(body)))

    run()
    # The fuzz reaches past the edge: a good share of the bodies are served by the (mock) provider,
    # translated or not, and the rest are refused as the caller's fault.
    served = statuses.count(200)
    print(f"{path}: {served} of {len(statuses)} bodies served upstream")  # shown with -s
    assert served >= len(statuses) // 20, (served, sorted(set(statuses)))
    assert {400, 200} <= set(statuses)


def test_random_json_and_bytes_never_answer_5xx(fuzz_world):
    loop, key = fuzz_world
    paths = st.sampled_from([CHAT, MESSAGES, COUNT_TOKENS, RESPONSES, "/v1/templates"])
    payloads = json_values.map(dumps) | st.binary(max_size=64)

    @fuzz(500)
    @given(paths, payloads)
    def run(path, body):
        check(loop, key, path, body=body)

    run()


def test_query_strings_and_paths_never_answer_5xx(fuzz_world):
    loop, key = fuzz_world
    dates = st.dates().map(str) | st.sampled_from(["9999-12-31", "0000-01-01", "2024-02-30", "2024-1-1"]) | short
    values = {
        "/v1/usage": {"start": dates, "end": dates},
        "/v1/logs": {
            "limit": st.integers(-5, 200).map(str) | short,
            "after": short | st.binary(max_size=24).map(lambda b: urllib.parse.quote(b.hex())),
            "model": short,
            "status": st.sampled_from(["error", "success", "200", "99", "600", "0x1f4"]) | short,
        },
        "/v1/models": {"x": short},
        "/v1/templates": {"x": short},
    }

    @st.composite
    def requests(draw):
        path = draw(st.sampled_from(sorted(values)))
        params = draw(st.fixed_dictionaries({}, optional=values[path]))
        if draw(st.booleans()):
            params[draw(short)] = draw(short)
        query = urllib.parse.urlencode(params).encode()
        return path, draw(st.just(query) | st.binary(max_size=32))

    segments = short.filter(lambda s: "/" not in s and "?" not in s and "#" not in s)

    @fuzz(500)
    @given(requests())
    def run_queries(request):
        path, query = request
        check(loop, key, path, method="GET", query=query)

    @fuzz(300)
    @given(
        st.sampled_from(["GET", "DELETE"]),
        st.sampled_from(["greet", "nope", ""]) | segments,
        st.integers(-1, 2**64).map(str) | segments,
    )
    def run_paths(method, name, version):
        check(loop, key, f"/v1/templates/{name}", method=method)
        check(loop, key, f"/v1/templates/{name}/versions/{version}", method="GET")
        check(loop, key, f"/v1/logs/{name}", method="GET")
        check(loop, key, f"/v1/responses/{name}", method=method)
        check(loop, key, f"/v1/responses/{name}/input_items", method="GET", query=version.encode())

    run_queries()
    run_paths()


def test_template_bodies_and_wrong_methods_never_answer_5xx(fuzz_world):
    loop, key = fuzz_world
    template_messages = st.lists(
        objects(
            {
                "role": st.sampled_from(["system", "developer", "user", "assistant"]),
                "content": text | st.lists(objects({"type": st.just("text"), "text": text}), min_size=1, max_size=2),
            },
            {"name": short},
        ),
        min_size=1,
        max_size=3,
    )
    bodies = objects(
        {"name": st.sampled_from(["t1", "t-2", "bad name"]) | short, "messages": template_messages},
        {"description": text},
    )

    @fuzz(300)
    @given(broken(bodies))
    def run_bodies(body):
        check(loop, key, "/v1/templates", body=dumps(body))

    @fuzz(100)
    @given(
        st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]),
        st.sampled_from([CHAT, MESSAGES, "/v1/models", "/v1/usage", "/v1/templates", "/v1/logs", "/v1/nope"]),
    )
    def run_methods(method, path):
        check(loop, key, path, method=method)

    run_bodies()
    run_methods()
