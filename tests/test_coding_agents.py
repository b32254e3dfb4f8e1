"""Coding agents as clients: Claude Code and Codex CLI finish a one-shot task through the gateway.

The agents are the real npm packages, at the exact versions pinned in tests/agents/package.json
(and its package-lock.json), installed on first use into a cache directory outside the checkout
(`CODING_AGENTS_DIR`, default `~/.cache/llm-proxy/coding-agents/<hash of the lock file>`): once per
machine and lock file, under a file lock, with a timeout. Skipped only when `node` (and so `npm`)
is missing.

Each agent runs with a fresh home directory and an environment built from nothing but PATH and the
settings the README's "Use with coding agents" gives, so that nothing of the machine's own
configuration (a real API key, a proxy) takes part and nothing but the gateway is called. The
gateway's upstream is the mock provider; after the run the test reads what the run left: the
agent's answer equal to the mock's deterministic reply, the usage records (tokens equal to the
mock's usage, cost exact), nothing in flight, the spend and token counters equal to the records.
"""

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum

from billing.models import UsageRecord
from gateway import limits
from gateway.mock import responses as mock_responses
from gateway.mock.server import anthropic_exchange, billing_encoding, compose_reply, prompt_tokens, reply_text, usage_of
from gateway.tokenizer import count_tokens
from tenants.services import api_key_create

from .conftest import start_gateway, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.coding_agents]

AGENTS = Path(__file__).resolve().parent / "agents"
# A day-long tokens window, so that the window's counter can be compared with the records.
WINDOW_SECONDS = 86400
INSTALL_TIMEOUT = 900  # a first install downloads ~250 MB of native binaries
RUN_TIMEOUT = 120
ONE_MILLION = Decimal(1_000_000)


def agents_dir() -> Path:
    lock = (AGENTS / "package-lock.json").read_bytes()
    default = Path.home() / ".cache" / "llm-proxy" / "coding-agents" / hashlib.sha256(lock).hexdigest()[:16]
    return Path(os.environ.get("CODING_AGENTS_DIR") or default)


def install_agents(target: Path) -> Path:
    """`npm ci` of tests/agents into `target` unless a finished install is there; its .bin folder.

    Idempotent and safe across processes: the install happens under an exclusive file lock, in a
    fresh folder that is renamed into place only when complete, so a killed install leaves nothing
    that looks finished.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    bin_dir = target / "node_modules" / ".bin"
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "installed").exists():
            return bin_dir
        staging = target.parent / f"{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in ("package.json", "package-lock.json"):
            shutil.copy(AGENTS / name, staging / name)
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm ci failed ({result.returncode}): {result.stderr[-3000:]}")
        (staging / "installed").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return bin_dir


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node (with npm) is not installed: the coding agents are npm packages")
    return install_agents(agents_dir())


@pytest.fixture(scope="module")
def gateway(mock_llm, django_db_setup):
    """This module's own gateway process: the day-long tokens window, the mock as every upstream."""
    process, url = start_gateway(
        mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0", GATEWAY_LIMIT_WINDOW_SECONDS=str(WINDOW_SECONDS)
    )
    yield url
    stop(process)


@pytest.fixture
def agent_tenant(settings, catalog, alice):
    """alice with every limit the counters track (so that they can be read back), and a key."""
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = WINDOW_SECONDS
    alice.max_concurrent = 4
    alice.tokens_per_minute = 2_000_000
    alice.save()
    alice.subscription.monthly_budget = Decimal("50.00")
    alice.subscription.save()
    return alice, api_key_create(tenant=alice, name="coding-agent")[1]


def base_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb"}


def mock_requests(mock_url: str, *, since: float) -> list[dict]:
    """What the shared mock received from `since` (its log keeps only the latest requests, so a
    count taken before a run says nothing once it is full)."""
    with urllib.request.urlopen(f"{mock_url}/_mock/requests", timeout=5) as response:
        return [r for r in json.load(response) if r["time"] >= since]


def read_usage(tenant_id: int) -> limits.LiveUsage:
    async def read():
        try:
            return await limits.live_usage(tenant_id)
        finally:
            await limits.aclose()

    return asyncio.run(read())


def assert_settled(tenant, *, window: int) -> None:
    """Nothing in flight; the month's spend and the tokens window equal what the records say."""
    records = UsageRecord.objects.filter(tenant=tenant)
    totals = records.aggregate(cost=Sum("cost"), input=Sum("input_tokens"), output=Sum("output_tokens"))
    usage = read_usage(tenant.id)
    assert usage.in_flight == 0
    assert usage.month_spend == totals["cost"]
    if window == current_window():
        # (When the day's window turned during the run, at 00:00 UTC, it holds only part of the tokens.)
        assert usage.tokens_this_window == totals["input"] + totals["output"]


def current_window() -> int:
    return int(time.time()) // WINDOW_SECONDS


def claude_code(agent_bin: Path, gateway: str, key: str, model: str, home: Path, workdir: Path):
    """One non-interactive Claude Code run (`claude -p`) against the gateway, every model it may pick set to `model`."""
    env = base_env(home) | {
        "ANTHROPIC_BASE_URL": gateway,
        "ANTHROPIC_API_KEY": key,
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    return subprocess.run(
        [agent_bin / "claude", "-p", "Reply with the word pong", "--output-format", "json"],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_claude_code_answers_through_the_gateway(agent_bin, gateway, mock_llm, agent_tenant, tmp_path, catalog):
    tenant, key = agent_tenant
    home, workdir = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    workdir.mkdir()
    since, window = time.time(), current_window()
    run = claude_code(agent_bin, gateway, key, "claude-test", home, workdir)
    assert run.returncode == 0, f"stdout: {run.stdout[-3000:]}\nstderr: {run.stderr[-3000:]}"
    answer = json.loads(run.stdout)
    assert answer["is_error"] is False

    # What reached the provider: the one model request, by the catalog model's upstream name.
    sent = [r for r in mock_requests(mock_llm, since=since) if r["path"] == "/v1/messages"]
    assert len(sent) == 1
    body = sent[0]["body"]
    assert body["model"] == "claude-haiku-4-5"
    assert body["stream"] is True
    assert "claude-code-20250219" in sent[0]["headers"]["anthropic-beta"].split(",")
    exchange = anthropic_exchange(body)
    reply = compose_reply(exchange, tool_id="unused")
    usage = usage_of(exchange, reply)
    assert answer["result"] == reply.text
    assert answer["result"].startswith("Mock reply from claude-haiku-4-5:")

    # One request refused with 400 (a mid-conversation "system" turn, which Claude Code then drops),
    # one answered; the answered one billed with the mock's tokens, exactly.
    records = list(UsageRecord.objects.filter(tenant=tenant).order_by("created_at", "id"))
    assert [(r.endpoint, r.status_code) for r in records] == [("messages", 400), ("messages", 200)]
    refused, answered = records
    assert (refused.input_tokens, refused.output_tokens, refused.cost) == (0, 0, 0)
    assert answered.model == "claude-test"
    assert answered.streamed is True
    assert answered.estimated is False
    assert answered.input_tokens == usage.prompt_tokens == answer["usage"]["input_tokens"]
    assert answered.output_tokens == usage.output_tokens == answer["usage"]["output_tokens"]
    price = catalog["claude"].prices.get()
    assert answered.cost == (usage.prompt_tokens * price.input_per_1m + usage.output_tokens * price.output_per_1m) / (
        ONE_MILLION
    )
    assert_settled(tenant, window=window)


def test_claude_code_on_a_gpt_model_answers_through_translation(
    agent_bin, gateway, mock_llm, agent_tenant, tmp_path, catalog
):
    """The thinking and context management Claude Code asks for on every turn mean nothing to an
    OpenAI model: they are dropped in translation, not refused (gateway/translate.py)."""
    tenant, key = agent_tenant
    home, workdir = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    workdir.mkdir()
    since, window = time.time(), current_window()
    run = claude_code(agent_bin, gateway, key, "gpt-test", home, workdir)
    assert run.returncode == 0, f"stdout: {run.stdout[-3000:]}\nstderr: {run.stderr[-3000:]}"
    answer = json.loads(run.stdout)
    assert answer["is_error"] is False
    sent = [r for r in mock_requests(mock_llm, since=since) if r["path"] == "/v1/chat/completions"]
    assert len(sent) == 1
    assert sent[0]["body"]["model"] == "gpt-4o-mini-2024-07-18"
    assert answer["result"].startswith("Mock reply from gpt-4o-mini-2024-07-18:")
    answered = UsageRecord.objects.filter(tenant=tenant, status_code=200).get()
    assert (answered.endpoint, answered.model, answered.estimated) == ("messages", "gpt-test", False)
    assert answered.input_tokens == answer["usage"]["input_tokens"]
    assert answered.output_tokens == answer["usage"]["output_tokens"]
    assert_settled(tenant, window=window)


CODEX_CONFIG = """\
model = "gpt-test"
model_provider = "gateway"
check_for_update_on_startup = false

[model_providers.gateway]
name = "LLM gateway"
base_url = "{gateway}/v1"
env_key = "GATEWAY_API_KEY"
wire_api = "responses"

[analytics]
enabled = false
"""


def test_codex_answers_through_the_gateway(agent_bin, gateway, mock_llm, agent_tenant, tmp_path, catalog):
    tenant, key = agent_tenant
    home, workdir = tmp_path / "home", tmp_path / "work"
    (home / ".codex").mkdir(parents=True)
    workdir.mkdir()
    (home / ".codex" / "config.toml").write_text(CODEX_CONFIG.format(gateway=gateway))
    since, window = time.time(), current_window()
    env = base_env(home) | {"CODEX_HOME": str(home / ".codex"), "GATEWAY_API_KEY": key}
    run = subprocess.run(
        [
            agent_bin / "codex",
            "exec",
            "--strict-config",
            "--skip-git-repo-check",
            "--ephemeral",
            "--json",
            "Reply with the word pong",
        ],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, f"stdout: {run.stdout[-3000:]}\nstderr: {run.stderr[-3000:]}"
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    messages = [
        e["item"]["text"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"
    ]
    (turn,) = [e for e in events if e["type"] == "turn.completed"]

    # What reached the provider: one streamed Responses request, by the catalog model's upstream name.
    sent = [r for r in mock_requests(mock_llm, since=since) if r["path"] == "/v1/responses"]
    assert len(sent) == 1
    body = sent[0]["body"]
    upstream = "gpt-4o-mini-2024-07-18"
    assert body["model"] == upstream
    assert body["stream"] is True
    items = mock_responses.input_items(body)
    task = [item for item in items if item.get("role") == "user"][-1]
    expected = reply_text(upstream, mock_responses._text(task["content"]))
    encoding = billing_encoding(upstream)
    input_tokens = prompt_tokens(mock_responses.as_messages(items), body.get("instructions"), encoding=encoding)
    output_tokens = count_tokens(expected, encoding=encoding)
    assert messages == [expected]

    (record,) = UsageRecord.objects.filter(tenant=tenant)
    assert (record.endpoint, record.status_code, record.model) == ("responses", 200, "gpt-test")
    assert record.streamed is True
    assert record.estimated is False
    assert record.input_tokens == input_tokens == turn["usage"]["input_tokens"]
    assert record.output_tokens == output_tokens == turn["usage"]["output_tokens"]
    assert record.cached_input_tokens == 0
    price = catalog["gpt"].prices.get()
    assert record.cost == (input_tokens * price.input_per_1m + output_tokens * price.output_per_1m) / ONE_MILLION
    assert_settled(tenant, window=window)
