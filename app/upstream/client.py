"""The one shared HTTP client to the upstream, and the upstream's URL layout.

Foundry Local serves its local catalog under a prefix (``/catalogs/local/v1/...``) and manages models
with ``GET .../models/load/{alias}``; a plain OpenAI-compatible server has ``/v1/...`` only. The
upstream's profile (``app.upstream.profile``) says which. The base URL can change at run time (a restarted
managed runtime comes back on a new port), so URLs are rebuilt by ``set_base_url``.

The client is httpx (the design card) over ``FastTransport``, a lean keep-alive pool: measured in
docs/performance.md, httpx's default pool costs several ms of CPU per request at concurrency 32. The
hot path hands prebuilt ``httpx.Request`` objects straight to the transport, skipping the client's
per-request cookie, auth and redirect machinery that a gateway to a loopback upstream never needs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import ssl
from typing import Any

import httpx
import orjson

from app.core.portable import can_quickack
from app.core.settings import Settings
from app.upstream.profile import PROFILES
from app.upstream.transport import FastTransport, ssl_context

log = logging.getLogger("foundry_gateway.upstream")


class Upstream:
    """Pooled keep-alive connections to the upstream plus its route layout."""

    def __init__(self, settings: Settings, base_url: str | None = None, kind: str | None = None) -> None:
        self.profile = PROFILES[kind or settings.upstream_kind]
        self.kind = self.profile.name
        self.prefix = self.profile.prefix(settings.foundry_catalog_prefix)
        self.has_completions = self.profile.has_completions
        self.manages_models = self.profile.manages_models
        headers = {"content-type": "application/json"}
        if settings.upstream_api_key:
            headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        self.headers = headers
        # The proxied routes bound the first byte and the gaps between chunks themselves (the proxy's
        # timers); the management calls (models, load, unload, status) carry a whole timeout each.
        self._proxy_timeout = httpx.Timeout(
            connect=settings.connect_timeout, read=None, write=settings.first_byte_timeout, pool=settings.queue_timeout,
        ).as_dict()
        self.transport = make_transport(settings)
        # Listing models and what is loaded is quick on a healthy upstream: bounded by twice the connect timeout.
        self.quick_timeout = 2 * settings.connect_timeout
        self.client = httpx.AsyncClient(
            transport=self.transport, timeout=httpx.Timeout(self.quick_timeout, connect=settings.connect_timeout),
        )
        self._header_list = list(headers.items())
        self._auth = [(k, v) for k, v in headers.items() if k != "content-type"]
        self.base_url = ""
        self.reads_our_files = False
        self.urls: dict[str, str] = {}
        self._url_objects: dict[str, httpx.URL] = {}
        self.set_base_url(base_url or settings.upstream_url or "http://127.0.0.1:5273")

    def set_base_url(self, url: str) -> None:
        base = url.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        self.base_url = base
        # Foundry Local on this host: its transcription endpoint takes a path it reads from its own disk
        self.reads_our_files = self.profile.reads_our_files(_loopback(httpx.URL(base).host))
        self.urls = self.profile.urls(base, self.prefix)
        self._url_objects = {name: httpx.URL(url) for name, url in self.urls.items()}
        # FastTransport: each route's request head up to its own headers, encoded once (``open``)
        auth = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in self._auth)
        self._heads = {name: (_pool_key(url), b"POST %s HTTP/1.1\r\nhost: %s\r\n%s" % (url.raw_path, url.netloc, auth))
                       for name, url in self._url_objects.items()}

    async def open(self, route: str, body: bytes, content_type: str | None = None,
                   extra: list[tuple[str, str]] | None = None) -> httpx.Response:
        """POST a body to a proxied route; returns once the response head arrived, body unread. ``extra``:
        headers a front passes on to its node (the request's priority and id)."""
        transport = self.transport
        if isinstance(transport, FastTransport):  # the request encoded here at once: no httpx.Request on the way
            key, head = self._heads[route]
            parts = [head, b"content-type: ", content_type.encode("latin-1") if content_type else b"application/json",
                     b"\r\n"]
            for name, value in extra or ():  # ids checked as visible ASCII, enums, the trace context
                if "\r" in value or "\n" in value:  # never a header of its own
                    continue
                parts.append(f"{name}: {value}\r\n".encode("latin-1"))
            parts.append(b"content-length: %d\r\n\r\n" % len(body))
            parts.append(body)
            return await transport.send_bytes(key, b"POST", b"".join(parts), self._proxy_timeout)
        headers = self._header_list if content_type is None else [("content-type", content_type), *self._auth]
        if extra:
            headers = [*headers, *extra]
        request = httpx.Request("POST", self._url_objects[route], content=body, headers=headers,
                                extensions={"timeout": self._proxy_timeout})
        return await transport.handle_async_request(request)

    async def get_json(self, url: str, timeout: float = 10.0) -> Any:
        """GET and parse JSON; every phase (connect, each read) bounded, the whole call by ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                response = await self.client.get(url, timeout=timeout, headers=self.headers)
        except TimeoutError:
            raise httpx.ReadTimeout(f"GET {url} took longer than {timeout:g}s") from None
        if response.status_code >= 400:
            raise httpx.HTTPStatusError(
                f"GET {url}: HTTP {response.status_code}: {response.text[:200]}",
                request=response.request, response=response,
            )
        return orjson.loads(response.content)

    async def model_ids(self) -> list[str]:
        data = await self.get_json(self.urls["models"], timeout=self.quick_timeout)
        items = data.get("data", []) if isinstance(data, dict) else data
        return [str(item["id"]) for item in items if isinstance(item, dict) and "id" in item]

    async def loaded_ids(self) -> list[str]:
        if not self.manages_models:
            return []
        data = await self.get_json(self.urls["loaded"], timeout=self.quick_timeout)
        return [str(x) for x in data] if isinstance(data, list) else []

    async def load(self, alias: str, timeout: float) -> str:
        data = await self.get_json(self.urls["load"] + alias, timeout=timeout)
        return str(data.get("status", "")) if isinstance(data, dict) else ""

    async def unload(self, alias: str, timeout: float = 60.0) -> str:
        data = await self.get_json(self.urls["unload"] + alias, timeout=timeout)
        return str(data.get("status", "")) if isinstance(data, dict) else ""

    def prune_idle(self) -> None:
        """Close idle connections past their keep-alive (the other transports expire them themselves)."""
        if isinstance(self.transport, FastTransport):
            self.transport.prune_idle()

    async def aclose(self) -> None:
        await self.client.aclose()


AIOHTTP_MISSING = "GATEWAY_UPSTREAM_TRANSPORT=aiohttp needs httpx-aiohttp: pip install 'foundry-gateway[aiohttp]'"


def transport_problem(settings: Settings) -> str | None:
    """Why the transport ``GATEWAY_UPSTREAM_TRANSPORT`` names cannot be used here, or None: ``serve`` says it in
    one line before it binds a port."""
    if settings.upstream_transport == "aiohttp" and importlib.util.find_spec("httpx_aiohttp") is None:
        return AIOHTTP_MISSING
    return None


def make_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    """The transport named by ``GATEWAY_UPSTREAM_TRANSPORT`` (docs/performance.md compares them)."""
    tls = upstream_ssl_context(settings)
    if settings.upstream_transport == "httpx":
        return httpx.AsyncHTTPTransport(verify=tls, limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=settings.max_in_flight,
            keepalive_expiry=settings.upstream_keepalive))
    if settings.upstream_transport == "aiohttp":
        try:
            from httpx_aiohttp import AiohttpTransport
        except ImportError:
            raise ImportError(AIOHTTP_MISSING, name="httpx_aiohttp") from None

        return AiohttpTransport(verify=tls, limits=httpx.Limits(  # type: ignore[no-any-return]
            max_connections=None, max_keepalive_connections=settings.max_in_flight,
            keepalive_expiry=settings.upstream_keepalive))
    fresh = settings.upstream_fresh_connections
    if fresh is None:  # no quick-ACK here: on loopback a new connection beats the delayed-ACK stall
        fresh = settings.upstream_tcp_tuning and not can_quickack() and _on_this_host(settings)
    return FastTransport(max_idle_per_host=0 if fresh else settings.max_in_flight,
                         keepalive_expiry=settings.upstream_keepalive, ssl_context=tls,
                         tcp_tuning=settings.upstream_tcp_tuning)


def _pool_key(url: httpx.URL) -> tuple[str, str, int]:
    """The (scheme, host, port) FastTransport pools connections by, as it derives it from a request."""
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


def _on_this_host(settings: Settings) -> bool:
    if settings.upstream_mode == "managed":
        return True
    return _loopback(httpx.URL(settings.upstream_url or "http://127.0.0.1").host)


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def upstream_ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS to an ``https://`` upstream: the system trust store (``SSL_CERT_FILE`` honoured), plus
    ``GATEWAY_UPSTREAM_CA_BUNDLE``; ``GATEWAY_UPSTREAM_TLS_VERIFY=false`` turns checking off (labs only)."""
    if not settings.upstream_tls_verify:
        log.warning("!!! GATEWAY_UPSTREAM_TLS_VERIFY=false: the upstream's TLS certificate is NOT checked; anyone "
                    "on the path can read and change prompts and answers. Use GATEWAY_UPSTREAM_CA_BUNDLE instead.")
    ca_bundle = str(settings.upstream_ca_bundle) if settings.upstream_ca_bundle else None
    return ssl_context(ca_bundle, verify=settings.upstream_tls_verify)
