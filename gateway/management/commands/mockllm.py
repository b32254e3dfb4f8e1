"""`manage.py mockllm --port N`: serve the built-in fake provider (gateway/mock/server.py) with uvicorn.

Prints one line, `mockllm listening on http://HOST:PORT`, once the socket accepts connections;
`--port 0` picks a free port and that line tells which.
"""

import argparse
import ipaddress
import logging
import socket

import uvicorn
from django.core.management.base import BaseCommand, CommandError

from gateway.mock.server import MockSettings, build_app

DEFAULT_PORT = 8900


class Command(BaseCommand):
    help = "Run the fake LLM provider (OpenAI, Azure OpenAI and Anthropic wire formats) on a loopback address."
    requires_system_checks: list[str] = []  # it uses neither models nor the database

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="A loopback address (default 127.0.0.1).")
        parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"Default {DEFAULT_PORT}; 0 = any free.")
        parser.add_argument("--latency-ms", type=_non_negative, default=0, help="Wait before the first byte.")
        parser.add_argument("--chunk-delay-ms", type=_non_negative, default=0, help="Wait between stream chunks.")
        parser.add_argument("--fault-rate", type=_probability, default=0.0, help="Share of requests that fail (0..1).")
        parser.add_argument("--fault-status", type=_error_status, default=500, help="Status of those failures.")
        parser.add_argument(
            "--prompt-cache-seconds",
            type=_non_negative,
            default=0,
            help="Simulate a provider's prompt cache: prefixes seen within N seconds are reported cached (0: off).",
        )
        parser.add_argument("--seed", type=int, default=None, help="Seed of the fault draws, for repeatable runs.")

    def handle(self, *args: object, **options: object) -> None:
        host = str(options["host"])
        if not _is_loopback(host):
            # A fake provider accepts any key and echoes requests back on /_mock/requests.
            raise CommandError(f"mockllm only listens on loopback addresses, not {host!r}.")
        settings = MockSettings(
            latency_ms=options["latency_ms"],
            chunk_delay_ms=options["chunk_delay_ms"],
            fault_rate=options["fault_rate"],
            fault_status=options["fault_status"],
            seed=options["seed"],
            prompt_cache_seconds=options["prompt_cache_seconds"],
        )
        config = uvicorn.Config(
            build_app(settings),
            host=host,
            port=options["port"],
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            # Longer than the SDK clients' keep-alive, so that the client closes idle connections first
            # and never sends on one the server is closing.
            timeout_keep_alive=120,
            timeout_graceful_shutdown=2,
        )
        logging.getLogger("uvicorn.error").addFilter(_QuietDroppedStreams())
        sock = _listen(host, options["port"], backlog=config.backlog)
        url_host = f"[{host}]" if ":" in host else host
        self.stdout.write(f"mockllm listening on http://{url_host}:{sock.getsockname()[1]}")
        self.stdout.flush()
        uvicorn.Server(config).run(sockets=[sock])


class _QuietDroppedStreams(logging.Filter):
    """[[mock:break_after=K]] drops connections on purpose; uvicorn would log each as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


def _listen(host: str, port: int, *, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise CommandError(f"mockllm cannot listen on {host}:{port}: {error.strerror}") from error
    # Listening before the server loop starts: connections made after the printed line wait in the backlog.
    sock.listen(backlog)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is 0 to 65535")
    return port


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def _probability(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError("a probability is 0 to 1")
    return rate


def _error_status(value: str) -> int:
    status = int(value)
    if not 400 <= status <= 599:
        raise argparse.ArgumentTypeError("an error status is 400 to 599")
    return status
