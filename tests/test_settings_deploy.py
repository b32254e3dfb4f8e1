"""`manage.py check --deploy` is clean with the production settings the README documents (docs/design.md#security)."""

import os
import secrets
import subprocess
import sys

from .conftest import ROOT

PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_ALLOWED_HOSTS": "gateway.example.com",
    "DJANGO_HSTS_SECONDS": "31536000",
    "DJANGO_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_HSTS_PRELOAD": "1",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_TRUST_X_FORWARDED_PROTO": "1",
}


def check_deploy(**env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_pass_the_deployment_checks():
    result = check_deploy(**PRODUCTION, DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_development_secret_key_fails_them():
    result = check_deploy(**PRODUCTION)
    assert result.returncode != 0
    assert "security.W009" in result.stdout + result.stderr


PROBE = """
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_platform.settings")
django.setup()
from django.test import Client
client = Client(HTTP_HOST="gateway.example.com")
for path in ("/healthz", "/v1/models", "/admin/"):
    response = client.get(path)
    print(path, response.status_code, response.get("location", ""))
"""


def test_with_https_enforced_only_the_probes_answer_over_plain_http():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(PRODUCTION, DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert "/healthz 200 " in lines
    assert "/v1/models 301 https://gateway.example.com/v1/models" in lines
    assert "/admin/ 301 https://gateway.example.com/admin/" in lines
