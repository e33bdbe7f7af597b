"""Who is calling, decided once per request before any handler runs: one plain ASGI middleware.

- ``/v1/*`` (the OpenAI API, the console's data): a team key (``GATEWAY_KEYS_FILE``), a flat key
  (``GATEWAY_API_KEYS``) or the admin key; anything else is a 401 in OpenAI's shape. With no keys configured at
  all the API is open (the start-up warning says so when that is beyond loopback); a keys file with no keys lets
  nobody in but the admin key.
- ``/admin/*``: the admin key only (``GATEWAY_ADMIN_API_KEY``; unset: 403, admin disabled).
- ``/metrics``: ``GATEWAY_METRICS_API_KEY`` when set — a key of its own, so a scraper's secret opens nothing else.
- probes, ``/ui`` and ``/docs``: open; the admin key there only shows more (URLs, errors, paths).

Keys are compared in constant time against every configured key, so timing does not tell which one matched; team
keys are looked up by their SHA-256 (``app.access.keys``). Handlers read the decision with :func:`caller_of`; they
never look at ``Authorization`` themselves.
"""

from __future__ import annotations

import hmac
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.access.control import Access
from app.access.keys import ApiKey
from app.core.errors import GatewayError, unauthorized
from app.core.metrics import Metrics
from app.core.settings import Settings


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKey | None = None  # a team key, with its allow-lists and quotas (None: unlimited)
    admin: bool = False  # presented the admin key


ANYONE = Caller()
ADMIN = Caller(admin=True)


SCOPE_KEY = "foundry_gateway.caller"  # where the decision travels with the request (an ASGI scope extension)
CONNECTION_KEY = "foundry_gateway.connection"  # the server's connection, told when a request of it passed


def caller_of(scope: MutableMapping[str, Any]) -> Caller:
    """The caller the middleware decided for this request (anyone, for a scope it never saw)."""
    caller = scope.get(SCOPE_KEY)
    return caller if isinstance(caller, Caller) else ANYONE


class AuthMiddleware:
    def __init__(self, app: ASGIApp, access: Access, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.access = access
        self.metrics = metrics
        self.keys_file = settings.keys_file is not None
        self.admin = settings.admin_api_key.encode() if settings.admin_api_key else None
        self.scraper = settings.metrics_api_key.encode() if settings.metrics_api_key else None
        flat = [key.encode() for key in settings.all_api_keys]
        if flat and self.admin:
            flat.append(self.admin)  # the admin key opens everything
        self.flat = tuple(flat)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        try:
            caller = self.identify(path, _bearer(scope))
        except GatewayError as err:
            if path.startswith("/v1/"):
                self.metrics.rejections.labels(self.metrics.rejection_label(err.code)).inc()
            await send_error(err, send)
            return
        scope[SCOPE_KEY] = caller
        if path.startswith("/v1/") or caller.admin:  # a key that opens the API (or an open API): a real client
            connection = scope.get(CONNECTION_KEY)
            if connection is not None:
                connection.authenticated()
        await self.app(scope, receive, send)

    def identify(self, path: str, token: bytes) -> Caller:
        admin = self.admin is not None and bool(token) and _matches(token, (self.admin,))
        if path.startswith("/v1/"):
            return self._api(token, admin)
        if path.startswith("/admin/"):
            if self.admin is None:
                raise GatewayError(403, "Admin routes are disabled: set GATEWAY_ADMIN_API_KEY.",
                                   code="admin_disabled")
            if not admin:
                raise unauthorized()
            return ADMIN
        if path == "/metrics" and self.scraper is not None and not _matches(token, (self.scraper,)):
            raise unauthorized()
        return ADMIN if admin else ANYONE

    def _api(self, token: bytes, admin: bool) -> Caller:
        if not self.flat and not self.keys_file:
            return ADMIN if admin else ANYONE  # no keys configured: open (the start-up warning says so)
        match = self.access.match(token.decode("latin-1")) if token and len(self.access.keyring) else None
        if match is not None:
            if match.expired():
                raise GatewayError(401, match.refusal(), code="expired_api_key", headers={"www-authenticate": "Bearer"})
            return Caller(key=match.key)
        accepted = self.flat or ((self.admin,) if self.admin else ())  # the admin key opens everything
        if accepted and _matches(token, accepted):
            return ADMIN if admin else ANYONE
        raise unauthorized()  # a keys file with no keys lets nobody in


async def send_error(err: GatewayError, send: Send) -> None:
    """An OpenAI-shaped error as the whole response."""
    body = err.to_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((k.encode(), v.encode()) for k, v in err.headers.items())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _bearer(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value[7:]).strip() if value[:7].lower() == b"bearer " else b""
    return b""


def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    ok = False
    for key in keys:  # compare with every key: timing does not tell which one matched
        ok |= hmac.compare_digest(token, key)
    return ok
