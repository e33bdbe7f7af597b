"""The ASGI application: a thin dispatcher that sends the two proxied routes straight to the proxy and
everything else to FastAPI.

``create_app()`` is the uvicorn factory (``uvicorn --factory app.server.app:create_app``); it reads settings
from the environment, so every worker process builds the same app.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.core.errors import GatewayError, error_body
from app.core.settings import Settings, load_settings
from app.gateway.gateway import Gateway
from app.openai.endpoints import ENDPOINTS
from app.proxy.proxy import Proxy
from app.server.api import router

log = logging.getLogger("foundry_gateway")

PROXIED = {path: endpoint.name for path, endpoint in ENDPOINTS.items()}


class GatewayApp:
    """Routes the proxied ``POST`` endpoints (chat, completions, responses, embeddings, transcriptions) to the
    proxy, the rest to FastAPI."""

    def __init__(self, api: FastAPI, proxy: Proxy) -> None:
        self.api = api
        self.proxy = proxy
        self.gateway = proxy.gw
        self.max_header_bytes = proxy.gw.settings.max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            err = GatewayError(431, f"Request headers are larger than {self.max_header_bytes} bytes.",
                               code="headers_too_large")
            await _error_response(err)(scope, receive, send)
            return
        if scope["type"] == "http":
            path = scope["path"]
            if scope["method"] == "POST":
                route = PROXIED.get(path.rstrip("/") or "/")
                if route is not None:
                    await self.proxy(scope, receive, send, route)
                    return
            if path.startswith("/v1/"):  # the OpenAI-style API is behind the API keys; probes are not
                try:
                    self.gateway.check_key(_header(scope, b"authorization"))
                except GatewayError as err:
                    await _error_response(err)(scope, receive, send)
                    return
        await self.api(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _error_response(err: GatewayError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(GatewayError)
    async def gateway_error(_: Request, err: GatewayError) -> JSONResponse:
        return _error_response(err)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}. See /docs for the API."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        return _error_response(GatewayError(exc.status_code, message, headers=dict(exc.headers or {})))

    @api.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body", "header"))
        message = f"Invalid {loc or 'request'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(message, "invalid_request_error", "invalid_value", loc or None), 400)

    @api.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body(f"Internal gateway error: {exc.__class__.__name__}", "api_error"), 500)


def build_app(settings: Settings, gateway: Gateway | None = None) -> ASGIApp:
    gw = gateway or Gateway(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            gw.draining = True
            await gw.stop()

    api = FastAPIOffline(  # /docs with Swagger UI served from the package, not a CDN
        title="foundry-gateway",
        version=__version__,
        description="One stable OpenAI-compatible URL in front of Foundry Local.",
        lifespan=lifespan,
    )
    api.state.gateway = gw
    api.include_router(router)
    _install_error_handlers(api)

    @api.get("/", include_in_schema=False)
    async def root() -> Response:
        return JSONResponse({"name": "foundry-gateway", "version": __version__, "openai_base_url": "/v1",
                             "docs": "/docs"})

    app: ASGIApp = GatewayApp(api, Proxy(gw))
    if settings.cors_origins:
        app = CORSMiddleware(app, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                             allow_headers=["*"], expose_headers=["x-gateway-model", "x-gateway-task",
                                                                  "x-gateway-route", "x-request-id"])
    return app


class SingleLineFormatter(logging.Formatter):
    """Every record on one line, whatever the terminal: newlines in messages and tracebacks are written as
    ``\\n``, so log shippers and ``grep`` see one event per line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def create_app(**overrides: Any) -> ASGIApp:
    """uvicorn factory: settings from the environment (``GATEWAY_*``)."""
    settings = load_settings(**overrides)
    handler = logging.StreamHandler()
    handler.setFormatter(SingleLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream call otherwise
    return build_app(settings)
