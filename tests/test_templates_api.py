"""Prompt templates: pure rendering and validation, the versioning service, and `/v1/templates`
over real HTTP against a live gateway process.
"""

import httpx2
import orjson
import pytest

from tenants import prompting
from tenants.models import PromptTemplate
from tenants.prompting import TemplateError, template_render, template_variables

GREETING = [
    {"role": "system", "content": "You answer as {{persona}}, briefly."},
    {"role": "user", "content": [{"type": "text", "text": "Greet {{ name }} in {{lang}}."}]},
]


# --- rendering: pure -------------------------------------------------------------------------


def test_render_substitutes_in_string_contents_and_text_parts():
    rendered = template_render(messages=GREETING, variables={"persona": "a pirate", "name": "Alice", "lang": "French"})
    assert rendered == [
        {"role": "system", "content": "You answer as a pirate, briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Greet Alice in French."}]},
    ]


def test_render_leaves_the_template_untouched():
    before = orjson.dumps(GREETING)
    template_render(messages=GREETING, variables={"persona": "x", "name": "y", "lang": "z"})
    assert orjson.dumps(GREETING) == before


def test_render_accepts_numbers():
    rendered = template_render(
        messages=[{"role": "user", "content": "{{n}} items at {{price}}"}], variables={"n": 3, "price": 2.5}
    )
    assert rendered[0]["content"] == "3 items at 2.5"


def test_render_repeats_a_variable_everywhere_it_appears():
    rendered = template_render(messages=[{"role": "user", "content": "{{a}}-{{ a }}-{{a }}"}], variables={"a": "x"})
    assert rendered[0]["content"] == "x-x-x"


def test_a_missing_variable_is_named():
    with pytest.raises(TemplateError) as caught:
        template_render(messages=GREETING, variables={"persona": "x", "lang": "y"})
    assert caught.value.param == "template.variables"
    assert "name" in str(caught.value)
    assert "Missing" in str(caught.value)


def test_an_unknown_variable_is_refused_as_a_probable_typo():
    with pytest.raises(TemplateError) as caught:
        template_render(messages=GREETING, variables={"persona": "x", "name": "y", "lang": "z", "nmae": "y"})
    assert caught.value.param == "template.variables"
    assert "nmae" in str(caught.value)


@pytest.mark.parametrize("value", [True, None, ["a"], {"a": 1}])
def test_variables_must_be_strings_or_numbers(value):
    with pytest.raises(TemplateError) as caught:
        template_render(messages=[{"role": "user", "content": "{{v}}"}], variables={"v": value})
    assert caught.value.param == "template.variables"


def test_variables_must_be_an_object():
    with pytest.raises(TemplateError):
        template_render(messages=[{"role": "user", "content": "{{v}}"}], variables=["v"])


def test_a_value_that_looks_like_a_placeholder_stays_literal():
    rendered = template_render(
        messages=[{"role": "user", "content": "{{a}} and {{b}}"}], variables={"a": "{{b}}", "b": "B"}
    )
    assert rendered[0]["content"] == "{{b}} and B"


def test_render_is_plain_substitution_with_no_expressions():
    # Whatever is not `{{name}}` is left alone: no attribute access, no filters, no evaluation.
    messages = [{"role": "user", "content": "{{ x.__class__ }} {{ 7*7 }} {% if x %} {{x}}"}]
    assert template_variables(messages) == {"x"}
    rendered = template_render(messages=messages, variables={"x": "v"})
    assert rendered[0]["content"] == "{{ x.__class__ }} {{ 7*7 }} {% if x %} v"


def test_the_rendered_size_is_bounded():
    messages = [{"role": "user", "content": "{{v}}" * 100}]
    with pytest.raises(TemplateError) as caught:
        template_render(messages=messages, variables={"v": "x" * 1000}, max_chars=50_000)
    assert caught.value.code == "template_too_large"
    assert len(template_render(messages=messages, variables={"v": "x" * 100}, max_chars=50_000)[0]["content"]) == 10_000


def test_template_variables_finds_every_placeholder():
    assert template_variables(GREETING) == {"persona", "name", "lang"}
    assert template_variables([{"role": "user", "content": "no placeholders {here}"}]) == set()


# --- validation of stored templates ----------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        ("hello", "messages"),
        (["hello"], "messages[0]"),
        ([{"role": "tool", "content": "x"}], "messages[0].role"),
        ([{"role": ["user"], "content": "x"}], "messages[0].role"),
        ([{"role": {"user": 1}, "content": "x"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ([{"role": "user", "content": []}], "messages[0].content"),
        ([{"role": "user", "content": "ok"}, {"role": "user", "content": "x", "tool_calls": []}], "messages[1]"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "text", "text": 1}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": "Hi {{ user.name }}"}], "messages[0].content"),
        ([{"role": "user", "content": "Hi {{ name | upper }}"}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "text", "text": "{{a b}}"}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": "a\x00b"}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "text", "text": "\x00"}]}], "messages[0].content[0]"),
        ([{"role": "user", "name": "a\x00", "content": "x"}], "messages[0].name"),
        ([{"role": "user", "content": "x"}] * 101, "messages"),
        ([{"role": "user", "content": "x" * (64 * 1024)}], "messages"),
    ],
)
def test_invalid_template_messages_are_refused_with_the_field(messages, param):
    with pytest.raises(TemplateError) as caught:
        prompting.template_validate_messages(messages)
    assert caught.value.param == param


def test_valid_template_messages_pass():
    messages = [
        {"role": "developer", "content": "Rules: {{rules}}"},
        {"role": "user", "name": "alice", "content": "{ not a placeholder } {{ok}}"},
        {"role": "assistant", "content": [{"type": "text", "text": "Sure."}]},
    ] + [{"role": "user", "content": "x"}] * 97
    assert prompting.template_validate_messages(messages) is messages


# --- services --------------------------------------------------------------------------------


def test_versions_count_up_per_tenant_and_name(alice, bob):
    first = prompting.template_create_version(tenant_id=alice.id, name="greet", messages=GREETING, description="d1")
    second = prompting.template_create_version(tenant_id=alice.id, name="greet", messages=GREETING[:1])
    bobs = prompting.template_create_version(tenant_id=bob.id, name="greet", messages=GREETING)
    assert (first.version, second.version, bobs.version) == (1, 2, 1)
    assert second.description == "d1"  # kept when not given
    third = prompting.template_create_version(tenant_id=alice.id, name="greet", messages=GREETING, description="")
    assert (third.version, third.description) == (3, "")


def test_resolve_finds_the_latest_or_the_asked_version_of_own_templates_only(alice, bob):
    prompting.template_create_version(tenant_id=alice.id, name="greet", messages=GREETING)
    prompting.template_create_version(tenant_id=alice.id, name="greet", messages=GREETING[:1])
    assert prompting.template_resolve(tenant_id=alice.id, name="greet").version == 2
    assert prompting.template_resolve(tenant_id=alice.id, name="greet", version=1).messages == GREETING
    assert prompting.template_resolve(tenant_id=alice.id, name="greet", version=3) is None
    assert prompting.template_resolve(tenant_id=bob.id, name="greet") is None
    assert prompting.template_resolve(tenant_id=bob.id, name="greet", version=1) is None


def test_create_refuses_bad_names_and_descriptions(alice):
    for name in ["", "has space", "x" * 101, "a/b", 7]:
        with pytest.raises(TemplateError) as caught:
            prompting.template_create_version(tenant_id=alice.id, name=name, messages=GREETING)
        assert caught.value.param == "name"
    with pytest.raises(TemplateError) as caught:
        prompting.template_create_version(tenant_id=alice.id, name="ok", messages=GREETING, description="x" * 201)
    assert caught.value.param == "description"
    with pytest.raises(TemplateError) as caught:
        prompting.template_create_version(tenant_id=alice.id, name="ok", messages=GREETING, description="\x00")
    assert caught.value.param == "description"
    assert not PromptTemplate.objects.exists()


def test_the_number_of_versions_is_bounded(alice, monkeypatch):
    monkeypatch.setattr(prompting, "VERSIONS_MAX_PER_TEMPLATE", 2)
    monkeypatch.setattr(prompting, "TEMPLATES_MAX_PER_TENANT", 2)
    for _ in range(2):
        prompting.template_create_version(tenant_id=alice.id, name="a", messages=GREETING)
    with pytest.raises(TemplateError) as caught:
        prompting.template_create_version(tenant_id=alice.id, name="a", messages=GREETING)
    assert caught.value.code == "too_many_versions"
    prompting.template_create_version(tenant_id=alice.id, name="b", messages=GREETING)
    with pytest.raises(TemplateError) as caught:
        prompting.template_create_version(tenant_id=alice.id, name="c", messages=GREETING)
    assert caught.value.code == "too_many_templates"


def test_list_is_one_query_with_the_latest_of_each(alice, bob, django_assert_num_queries):
    for name in ["b", "a", "c"]:
        for version in range(3):
            prompting.template_create_version(
                tenant_id=alice.id, name=name, messages=GREETING, description=f"{name}{version + 1}"
            )
    prompting.template_create_version(tenant_id=bob.id, name="z", messages=GREETING)
    with django_assert_num_queries(1):
        listed = prompting.template_list(tenant_id=alice.id)
    assert [(t.name, t.latest_version, t.description) for t in listed] == [
        ("a", 3, "a3"),
        ("b", 3, "b3"),
        ("c", 3, "c3"),
    ]
    assert all(t.created_at <= t.updated_at for t in listed)


def test_delete_removes_every_version_of_own_template_only(alice, bob):
    for tenant in (alice, bob):
        prompting.template_create_version(tenant_id=tenant.id, name="greet", messages=GREETING)
        prompting.template_create_version(tenant_id=tenant.id, name="greet", messages=GREETING)
    assert prompting.template_delete(tenant_id=alice.id, name="greet") == 2
    assert prompting.template_delete(tenant_id=alice.id, name="greet") == 0
    assert PromptTemplate.objects.filter(tenant=bob).count() == 2


# --- /v1/templates over HTTP -----------------------------------------------------------------


def client(gateway, key) -> httpx2.Client:
    return httpx2.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def assert_openai_error(response, status, *, param=None, code=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.django_db(transaction=True)
def test_templates_are_created_versioned_read_listed_and_deleted(gateway, alice_key):
    with client(gateway, alice_key) as api:
        created = api.post("/v1/templates", json={"name": "greet", "description": "Say hello", "messages": GREETING})
        assert created.status_code == 201, created.text
        body = created.json()
        assert set(body) == {"name", "version", "description", "messages", "variables", "created_at"}
        assert (body["name"], body["version"], body["description"]) == ("greet", 1, "Say hello")
        assert body["messages"] == GREETING
        assert body["variables"] == ["lang", "name", "persona"]

        second = api.post(
            "/v1/templates", json={"name": "greet", "messages": [{"role": "user", "content": "Hi {{x}}"}]}
        )
        assert second.status_code == 201
        assert (second.json()["version"], second.json()["description"], second.json()["variables"]) == (
            2,
            "Say hello",
            ["x"],
        )
        api.post("/v1/templates", json={"name": "other", "messages": [{"role": "user", "content": "plain"}]})

        latest = api.get("/v1/templates/greet")
        assert latest.status_code == 200
        assert latest.json()["version"] == 2
        v1 = api.get("/v1/templates/greet/versions/1")
        assert v1.status_code == 200
        assert v1.json() == body

        listed = api.get("/v1/templates").json()
        assert listed["object"] == "list"
        assert [(t["name"], t["latest_version"], t["description"]) for t in listed["data"]] == [
            ("greet", 2, "Say hello"),
            ("other", 1, ""),
        ]
        assert {"name", "latest_version", "description", "created_at"} <= set(listed["data"][0])

        deleted = api.delete("/v1/templates/greet")
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert_openai_error(api.get("/v1/templates/greet"), 404, code="not_found")
        assert_openai_error(api.get("/v1/templates/greet/versions/1"), 404)
        assert_openai_error(api.delete("/v1/templates/greet"), 404)
        assert [t["name"] for t in api.get("/v1/templates").json()["data"]] == ["other"]


@pytest.mark.django_db(transaction=True)
def test_unknown_templates_and_versions_are_404s(gateway, alice_key):
    with client(gateway, alice_key) as api:
        api.post("/v1/templates", json={"name": "greet", "messages": GREETING})
        assert_openai_error(api.get("/v1/templates/nope"), 404)
        assert_openai_error(api.get("/v1/templates/greet/versions/2"), 404)
        assert_openai_error(api.get("/v1/templates/greet/versions/0"), 404)
        assert_openai_error(api.get("/v1/templates/greet/versions/abc"), 404)
        assert_openai_error(api.get("/v1/templates/greet/versions/99999999999999999999"), 404)
        assert_openai_error(api.get("/v1/templates/bad%20name"), 404)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": GREETING}, "name"),
        ({"name": "has space", "messages": GREETING}, "name"),
        ({"name": "greet"}, "messages"),
        ({"name": "greet", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"name": "greet", "messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"name": "greet", "messages": GREETING, "tags": []}, "tags"),
        ({"name": "greet", "messages": [{"role": "user", "content": "{{ a.b }}"}]}, "messages[0].content"),
        ({"name": "greet", "messages": GREETING, "description": 5}, "description"),
        ({"name": "greet", "messages": GREETING, "variables": {}}, "variables"),
    ],
)
def test_bad_template_bodies_are_400_with_the_field(gateway, alice_key, body, param):
    with client(gateway, alice_key) as api:
        assert_openai_error(api.post("/v1/templates", json=body), 400, param=param)
        assert api.get("/v1/templates").json()["data"] == []


@pytest.mark.django_db(transaction=True)
def test_bodies_that_are_not_json_objects_are_400(gateway, alice_key):
    with client(gateway, alice_key) as api:
        headers = {"content-type": "application/json"}
        assert_openai_error(api.post("/v1/templates", content=b"{nope", headers=headers), 400, code="invalid_json")
        assert_openai_error(api.post("/v1/templates", content=b"[]", headers=headers), 400, code="invalid_json")


@pytest.mark.django_db(transaction=True)
def test_wrong_methods_are_405_in_the_openai_shape(gateway, alice_key):
    with client(gateway, alice_key) as api:
        api.post("/v1/templates", json={"name": "greet", "messages": GREETING})
        for method, path in [
            ("PUT", "/v1/templates"),
            ("DELETE", "/v1/templates"),
            ("POST", "/v1/templates/greet"),
            ("PATCH", "/v1/templates/greet"),
            ("DELETE", "/v1/templates/greet/versions/1"),
            ("OPTIONS", "/v1/templates"),
        ]:
            response = api.request(method, path)
            assert_openai_error(response, 405, code="method_not_allowed")
        assert api.get("/v1/templates/greet").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_templates_need_a_valid_key(gateway, alice_key):
    assert_openai_error(httpx2.get(f"{gateway}/v1/templates"), 401, code="missing_api_key")
    wrong = alice_key[:-4] + ("AAAA" if not alice_key.endswith("AAAA") else "BBBB")
    assert_openai_error(client(gateway, wrong).get("/v1/templates"), 401)
    assert_openai_error(client(gateway, "tpk_nonsense").post("/v1/templates", json={"name": "x"}), 401)
    # x-api-key works as on the completion endpoints.
    response = httpx2.get(f"{gateway}/v1/templates", headers={"x-api-key": alice_key})
    assert response.status_code == 200
