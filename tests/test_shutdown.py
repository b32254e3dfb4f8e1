"""A gateway that stops says nothing alarming (issue 11, item 5).

The provider SDKs' clients hold aiohttp sessions for the life of the process; a process that
exits without closing them makes aiohttp log `Unclosed client session` (through asyncio's
exception handler, at ERROR) for each. Staff reading the log of a routine restart must not find
error lines there, so the ASGI lifespan closes them at shutdown.
"""

import json
import signal
import subprocess

import anthropic
import openai
import pytest

from .conftest import start_gateway

pytestmark = pytest.mark.django_db(transaction=True)


def serious_lines(text: str) -> list[str]:
    """Lines at WARNING or above, and any line that mentions an unclosed resource."""
    found = []
    for line in text.splitlines():
        try:
            level = str(json.loads(line).get("level", "")).upper()
        except ValueError:
            level = ""
        if level in {"WARNING", "ERROR", "CRITICAL"} or "Unclosed" in line or "Traceback" in line:
            found.append(line[:500])
    return found


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stopped_gateway_closes_its_provider_clients_and_logs_no_error(mock_llm, catalog, alice_key, stop_signal):
    process, url = start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0")
    try:
        chat = openai.OpenAI(base_url=f"{url}/v1", api_key=alice_key, max_retries=0)
        for model in ("gpt-test", "azure-gpt-test"):  # the OpenAI and the Azure OpenAI client
            reply = chat.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content
        messages = anthropic.Anthropic(base_url=url, api_key=alice_key, max_retries=0)
        reply = messages.messages.create(
            model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )  # the Anthropic client
        assert reply.content[0].text
    finally:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    # uvicorn shuts down gracefully, then re-raises the signal it caught: SIGTERM ends the process
    # at once (-15), SIGINT as a KeyboardInterrupt that uvicorn.s command catches: an ordinary exit (0), which
    # finalizes whatever is still open.
    assert process.returncode in {-signal.SIGTERM, 0}
    stderr = process.log_path.read_text(errors="replace")
    assert serious_lines(stderr) == []
    # Closed by the lifespan, not left to the exit: SIGTERM's exit finalizes nothing, so without
    # this line a SIGTERM'd gateway would look clean while dropping its connections unclosed.
    assert "closed 3 provider client(s)" in stderr
