"""The mock provider's `POST /v1/messages/count_tokens` (gateway/mock/count_tokens.py), over HTTP."""

import httpx2
import pytest

HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
BODY = {
    "model": "claude-haiku-4-5",
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": "Count me, please."},
        {"role": "assistant", "content": [{"type": "text", "text": "Sure."}]},
        {"role": "user", "content": "And now?"},
    ],
}


def test_the_count_is_what_a_message_bills_as_input(mock_llm):
    counted = httpx2.post(f"{mock_llm}/v1/messages/count_tokens", json=BODY, headers=HEADERS)
    assert counted.status_code == 200
    assert counted.headers["request-id"].startswith("req_")
    message = httpx2.post(f"{mock_llm}/v1/messages", json={**BODY, "max_tokens": 10}, headers=HEADERS).json()
    assert counted.json() == {"input_tokens": message["usage"]["input_tokens"]}


@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        ({**BODY, "max_tokens": 10}, HEADERS, 400, "max_tokens: Extra inputs are not permitted"),
        ({**BODY, "stream": True}, HEADERS, 400, "stream: Extra inputs are not permitted"),
        ({**BODY, "messages": []}, HEADERS, 400, "messages"),
        ({**BODY, "messages": [{"role": "system", "content": "x"}]}, HEADERS, 400, 'Unexpected role "system"'),
        ({"messages": BODY["messages"]}, HEADERS, 400, "model: Field required"),
        (BODY, {"x-api-key": "sk-test"}, 400, "anthropic-version"),
        (BODY, {"anthropic-version": "2023-06-01"}, 401, "x-api-key"),
        ({**BODY, "messages": [{"role": "user", "content": "[[mock:status=529]]"}]}, HEADERS, 529, "Overloaded"),
    ],
)
def test_it_is_as_strict_as_the_real_endpoint(mock_llm, body, headers, status, words):
    answer = httpx2.post(f"{mock_llm}/v1/messages/count_tokens", json=body, headers=headers)
    assert answer.status_code == status
    error = answer.json()
    assert error["type"] == "error"
    assert words.lower() in error["error"]["message"].lower()
