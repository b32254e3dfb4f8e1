"""`manage.py demo`: the whole platform on one machine with nothing installed but Python.

SQLite, the local-memory cache, eager Celery, the built-in mock provider as every upstream.
Loads the example tenants, a month of generated traffic and a few live requests, then keeps
the mock provider and the gateway running until Ctrl-C.
"""

import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from billing.models import UsageRecord
from billing.synthetic import synthetic_usage_create
from tenants import audit
from tenants.audit import AuditedCommand
from tenants.models import Tenant
from tenants.services import api_key_create

DEMO_ADMIN = ("admin", "admin")
UPSTREAM_KEY = "sk-demo-upstream"


class Command(AuditedCommand):
    help = "Run the demo: example tenants, generated traffic, the mock provider and the gateway."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="gateway port")
        parser.add_argument("--mock-port", type=int, default=8090, help="mock provider port")
        parser.add_argument("--config", default=str(settings.BASE_DIR / "examples" / "tenants.json"))
        parser.add_argument("--no-serve", action="store_true", help="prepare the data, start nothing")

    def handle(self, *args, port: int, mock_port: int, config: str, no_serve: bool, **options):
        call_command("migrate", verbosity=0)
        call_command("import_tenants", config, stdout=io.StringIO())
        self._admin_user()
        key = self._demo_key()
        if not UsageRecord.objects.exists():
            end = timezone.now().replace(minute=0, second=0, microsecond=0)
            count = synthetic_usage_create(start=end - timedelta(days=30), end=end, requests_per_tenant_day=60)
            self.stdout.write(f"generated {count} usage records for the last 30 days")
            call_command("rollup_usage", stdout=io.StringIO())
            this_month = end.date().replace(day=1)
            last_month = (this_month - timedelta(days=1)).replace(day=1)
            for month in (last_month, this_month):
                call_command("generate_invoices", "--period", f"{month:%Y-%m}", stdout=io.StringIO())
            self.stdout.write("rolled up usage and drafted invoices for last month and this month")
        if no_serve:
            self.stdout.write(f"demo key for tenant_a: {key}")
            return
        self._serve(port=port, mock_port=mock_port, key=key)

    def _admin_user(self) -> None:
        user_model = get_user_model()
        username, password = DEMO_ADMIN
        if not user_model.objects.filter(username=username).exists():
            user_model.objects.create_superuser(username=username, email="admin@example.com", password=password)

    def _demo_key(self) -> str:
        tenant = Tenant.objects.order_by("slug").first()
        audit.queryset_update(tenant.api_keys.filter(name="demo"), revoked_at=timezone.now())
        return api_key_create(tenant=tenant, name="demo")[1]

    def _serve(self, *, port: int, mock_port: int, key: str) -> None:
        mock_url = f"http://127.0.0.1:{mock_port}"
        gateway_url = f"http://127.0.0.1:{port}"
        env = dict(
            os.environ,
            DJANGO_DEBUG="1",
            OPENAI_API_KEY=UPSTREAM_KEY,
            OPENAI_BASE_URL=f"{mock_url}/v1",
            ANTHROPIC_API_KEY=UPSTREAM_KEY,
            ANTHROPIC_BASE_URL=mock_url,
            AZURE_OPENAI_API_KEY=UPSTREAM_KEY,
            AZURE_OPENAI_ENDPOINT=mock_url,
        )
        python = sys.executable
        # The servers log JSON, a line per request: to files, so that the banner stays readable.
        logs = settings.BASE_DIR / "var" / "demo"
        logs.mkdir(parents=True, exist_ok=True)
        self._logs = logs
        mock_log = open(logs / "mockllm.log", "ab")  # noqa: SIM115 (closed when the servers stop)
        gateway_log = open(logs / "gateway.log", "ab")  # noqa: SIM115
        processes = [
            subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [
                    python,
                    "manage.py",
                    "mockllm",
                    "--port",
                    str(mock_port),
                    "--latency-ms",
                    "150",
                    "--chunk-delay-ms",
                    "15",
                ],
                cwd=settings.BASE_DIR,
                env=env,
                stdout=mock_log,
                stderr=subprocess.STDOUT,
                process_group=0,
            ),
            subprocess.Popen(  # noqa: S603
                [
                    python,
                    "-m",
                    "uvicorn",
                    "proxy_platform.asgi:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                    "--log-config",
                    str(settings.BASE_DIR / "proxy_platform" / "uvicorn_logging.json"),
                ],
                cwd=settings.BASE_DIR,
                env=env,
                stdout=gateway_log,
                stderr=subprocess.STDOUT,
                process_group=0,
            ),
        ]
        # The servers run in process groups of their own, so that Ctrl-C in the terminal reaches this
        # command only, which then stops each of them with exactly one SIGTERM: a gateway that got
        # the terminal's SIGINT and this SIGTERM too would take the second as "force quit" and skip
        # its lifespan shutdown (the usage writes still pending, closing the provider clients).
        # SIGTERM (a supervisor, `kill`) and SIGHUP (the terminal closed) stop them the same way,
        # never leave them behind.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)
        try:
            _wait(f"{mock_url}/health")
            _wait(f"{gateway_url}/healthz")
            self._live_traffic(gateway_url, key)
            self._banner(gateway_url, key)
            while all(p.poll() is None for p in processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            mock_log.close()
            gateway_log.close()

    def _live_traffic(self, gateway_url: str, key: str) -> None:
        """A few real requests through the gateway, so the newest usage rows are live ones."""
        import anthropic
        import openai

        chat = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0)
        messages = anthropic.Anthropic(base_url=gateway_url, api_key=key, max_retries=0)
        models = [m.id for m in chat.models.list().data]
        for model in models[:4]:
            chat.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello from the demo"}])
            messages.messages.create(
                model=model, max_tokens=64, messages=[{"role": "user", "content": "Hello from the demo"}]
            )
        self.stdout.write(f"sent {2 * len(models[:4])} live requests through the gateway")
        self._first_model = models[0] if models else "gpt-4o-mini"

    def _banner(self, gateway_url: str, key: str) -> None:
        model = getattr(self, "_first_model", "gpt-4o-mini")
        user, password = DEMO_ADMIN
        self.stdout.write(
            f"""
The platform is up (Ctrl-C stops it).

  Admin:    {gateway_url}/admin/   (login {user} / {password}; the home page is the dashboard)
  Gateway:  {gateway_url}/v1       (the built-in mock provider answers behind it)
  Metrics:  {gateway_url}/metrics  (open in the demo; production needs GATEWAY_METRICS_TOKEN)
  Logs:     {self._logs}/gateway.log   (one JSON line per request)
  Key:      {key}   (tenant_a, shown once)

Try it:

  curl {gateway_url}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  .venv/bin/python -c "
from openai import OpenAI
client = OpenAI(base_url='{gateway_url}/v1', api_key='{key}')
reply = client.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello!'}}])
print(reply.choices[0].message.content)"
"""
        )


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _wait(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (a local http URL of ours)
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")
