"""`/v1/logs`: a tenant's request logs, newest first, cursor-paginated, over real HTTP against a
live gateway process; and the keyset pagination underneath, at the service level.
"""

import base64
from datetime import UTC, datetime, timedelta

import httpx2
import openai
import orjson
import pytest

from tenants import prompting
from tenants.models import RequestLog

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def make_log(tenant, n, *, at=None, model="gpt-test", status=200, endpoint="chat"):
    return RequestLog.objects.create(
        tenant=tenant,
        request_id=f"{tenant.slug}-{n:04d}",
        model=model,
        endpoint=endpoint,
        status_code=status,
        request={"model": model, "messages": [{"role": "user", "content": f"question {n}"}]},
        response={"choices": [{"message": {"role": "assistant", "content": f"answer {n}"}}]} if status < 400 else None,
        created_at=at or T0 + timedelta(seconds=n),
    )


def client(gateway, key) -> httpx2.Client:
    return httpx2.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def all_pages(api, **params) -> tuple[list[str], int]:
    ids, pages, after = [], 0, None
    while True:
        query = dict(params, **({"after": after} if after else {}))
        response = api.get("/v1/logs", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        ids += [entry["id"] for entry in page["data"]]
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            return ids, pages
        after = page["next_cursor"]


# --- service ---------------------------------------------------------------------------------


def test_pages_never_skip_or_repeat_rows_with_equal_timestamps(alice):
    # Ten rows in the same microsecond: only the id tells them apart.
    logs = [make_log(alice, n, at=T0) for n in range(10)] + [make_log(alice, n) for n in range(10, 15)]
    seen, after = [], None
    while True:
        page = prompting.request_logs_page(tenant_id=alice.id, limit=4, after=after)
        seen += [row["request_id"] for row in page.logs]
        if not page.has_more:
            break
        after = prompting.logs_cursor_decode(page.next_cursor)
    expected = sorted(logs, key=lambda log: (log.created_at, log.id), reverse=True)
    assert seen == [log.request_id for log in expected]


def test_a_cursor_round_trips_to_the_microsecond():
    at = datetime(2025, 3, 1, 12, 0, 0, 123457, tzinfo=UTC)
    cursor = prompting.logs_cursor_encode(created_at=at, log_id=42)
    assert prompting.logs_cursor_decode(cursor) == (at, 42)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "not-base64-json",
        base64.urlsafe_b64encode(b"[1, 2, 3]").decode(),
        base64.urlsafe_b64encode(b'["a", 2]').decode(),
        base64.urlsafe_b64encode(b"[-1, 2]").decode(),
        base64.urlsafe_b64encode(b"[1, true]").decode(),
        base64.urlsafe_b64encode(b"[99999999999999999999, 1]").decode(),
        base64.urlsafe_b64encode(b"[9223372036854775000, 1]").decode(),
        base64.urlsafe_b64encode(b"[1, 9223372036854775808]").decode(),
        "é",
    ],
)
def test_malformed_cursors_are_refused(cursor):
    with pytest.raises(prompting.CursorError):
        prompting.logs_cursor_decode(cursor)


def test_a_page_is_one_query(alice, django_assert_num_queries):
    for n in range(30):
        make_log(alice, n)
    with django_assert_num_queries(1):
        page = prompting.request_logs_page(tenant_id=alice.id, limit=25)
    assert len(page.logs) == 25


# --- over HTTP -------------------------------------------------------------------------------

live = pytest.mark.django_db(transaction=True)


@live
def test_logs_are_listed_newest_first_in_pages(gateway, alice, alice_key):
    for n in range(45):
        make_log(alice, n)
    with client(gateway, alice_key) as api:
        first = api.get("/v1/logs").json()
        assert first["object"] == "list"
        assert len(first["data"]) == 20  # the default limit
        assert first["has_more"] is True
        entry = first["data"][0]
        assert set(entry) == {"id", "created_at", "model", "endpoint", "status_code", "request", "response"}
        assert entry["id"] == "alice-0044"
        assert entry["request"]["messages"][0]["content"] == "question 44"
        assert entry["response"]["choices"][0]["message"]["content"] == "answer 44"
        assert datetime.fromisoformat(entry["created_at"]) == T0 + timedelta(seconds=44)

        ids, pages = all_pages(api, limit=10)
        assert pages == 5
        assert ids == [f"alice-{n:04d}" for n in reversed(range(45))]

        last = api.get("/v1/logs", params={"limit": 100}).json()
        assert (len(last["data"]), last["has_more"], last["next_cursor"]) == (45, False, None)


@live
def test_logs_filter_by_model_and_status(gateway, alice, alice_key):
    for n in range(6):
        make_log(alice, n, model="gpt-test" if n % 2 else "claude-test", status=200 if n < 4 else 429)
    with client(gateway, alice_key) as api:
        ids, _ = all_pages(api, model="claude-test", limit=1)
        assert ids == ["alice-0004", "alice-0002", "alice-0000"]
        assert all_pages(api, status=429)[0] == ["alice-0005", "alice-0004"]
        assert all_pages(api, status="error")[0] == ["alice-0005", "alice-0004"]
        assert all_pages(api, status="success", model="gpt-test")[0] == ["alice-0003", "alice-0001"]
        assert all_pages(api, model="nope")[0] == []


@live
def test_one_log_is_found_by_its_request_id(gateway, alice, alice_key):
    make_log(alice, 1, status=500)
    with client(gateway, alice_key) as api:
        response = api.get("/v1/logs/alice-0001")
        assert response.status_code == 200
        body = response.json()
        assert (body["id"], body["status_code"], body["response"]) == ("alice-0001", 500, None)
        missing = api.get("/v1/logs/alice-0002")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


@live
@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"after": "garbage!"}, "after"),
        ({"after": base64.urlsafe_b64encode(orjson.dumps({"id": 1})).decode()}, "after"),
        ({"status": "teapot"}, "status"),
        ({"status": "999"}, "status"),
    ],
)
def test_bad_log_queries_are_400_with_the_param(gateway, alice_key, params, param):
    with client(gateway, alice_key) as api:
        response = api.get("/v1/logs", params=params)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert response.json()["error"]["type"] == "invalid_request_error"


@live
def test_logs_need_a_key_and_a_get(gateway, alice, alice_key):
    make_log(alice, 1)
    assert httpx2.get(f"{gateway}/v1/logs").status_code == 401
    assert httpx2.get(f"{gateway}/v1/logs/alice-0001").status_code == 401
    with client(gateway, alice_key) as api:
        for method, path in [("POST", "/v1/logs"), ("DELETE", "/v1/logs/alice-0001"), ("PUT", "/v1/logs/alice-0001")]:
            response = api.request(method, path)
            assert response.status_code == 405
            assert response.json()["error"]["code"] == "method_not_allowed"
    assert RequestLog.objects.filter(request_id="alice-0001").exists()


@live
def test_a_logged_completion_can_be_read_back_by_its_request_id(gateway, catalog, alice, alice_key):
    """The whole loop: a tenant with logging on calls the gateway, then reads the log of that call."""
    alice.log_requests = True
    alice.save()
    sdk = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "Log me please"}]
    )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    with client(gateway, alice_key) as api:
        response = api.get(f"/v1/logs/{request_id}")
        assert response.status_code == 200, response.text
        log = response.json()
        assert (log["id"], log["model"], log["endpoint"], log["status_code"]) == (request_id, "gpt-test", "chat", 200)
        assert log["request"]["messages"] == [{"role": "user", "content": "Log me please"}]
        assert completion.choices[0].message.content in orjson.dumps(log["response"]).decode()
        assert [entry["id"] for entry in api.get("/v1/logs").json()["data"]] == [request_id]
