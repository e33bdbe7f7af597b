"""Talking to a running gateway from the CLI (``--gateway URL``, ``--api-key``): a URL without a scheme is
``http://``, the key comes from ``--api-key`` or ``GATEWAY_API_KEY``, and whatever goes wrong — nothing
listening, a timeout, a 401 — is one line naming the gateway, never a traceback."""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx
import orjson

from app.cli.output import CliError
from app.core.settings import Settings


class Unreachable(CliError):
    """No gateway answered (nothing listening, a timeout): what a command may then work out on its own."""


class Refused(CliError):
    """The gateway answered with an error: its message, and the error object (what was considered, the fix)."""

    def __init__(self, message: str, status: int, error: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def add_options(parser: argparse.ArgumentParser, *, gateway_help: str) -> None:
    parser.add_argument("--gateway", metavar="URL", help=gateway_help)
    parser.add_argument("--api-key", help="the key to send to the gateway (default: $GATEWAY_API_KEY)")


def normalize(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url.removesuffix("/v1")


def local_gateway(settings: Settings) -> str:
    """The URL of the gateway these settings describe, as reached from this host."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def api_key(args: argparse.Namespace) -> str | None:
    return getattr(args, "api_key", None) or os.environ.get("GATEWAY_API_KEY") or None


def get(url: str, path: str, key: str | None, *, timeout: float = 10.0) -> Any:
    """GET a gateway's JSON; any failure is a one-line CliError."""
    return _ask("GET", url, path, key, timeout)


def post(url: str, path: str, key: str | None, *, timeout: float = 10.0) -> Any:
    """POST to a gateway (no body) and read its JSON; any failure is a one-line CliError."""
    return _ask("POST", url, path, key, timeout)


def _ask(method: str, url: str, path: str, key: str | None, timeout: float) -> Any:
    base = normalize(url)
    try:
        response = httpx.request(method, base + path, timeout=timeout,
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
    except httpx.ConnectError:
        raise Unreachable(f"no gateway answers at {base} (is `foundry-gateway serve` running there?)") from None
    except httpx.TimeoutException:
        raise Unreachable(f"the gateway at {base} did not answer within {timeout:g}s") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise CliError(f"cannot ask {base}: {exc.__class__.__name__}: {exc}") from None
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise CliError(f"{base}{path} answered {response.status_code} without JSON: is it a foundry-gateway?") \
            from None
    if response.status_code >= 400:
        found = data.get("error") if isinstance(data, dict) else None
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        hint = " (pass --api-key or set GATEWAY_API_KEY)" if response.status_code == 401 else ""
        raise Refused(f"{base} answered {response.status_code}: {error.get('message') or response.reason_phrase}"
                      f"{hint}", response.status_code, error)
    return data
