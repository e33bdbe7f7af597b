"""The ASGI application, layer by layer from the outside in:

  CORS (when ``GATEWAY_CORS_ORIGINS``) → header size limit (431) → who is calling (``app.access.middleware``)
  → dispatch: the proxied ``POST`` endpoints straight to the proxy, everything else to FastAPI

``create_app()`` is the uvicorn factory (``uvicorn --factory app.server.app:create_app``); it reads settings from
the environment, so every worker process builds the same app.
"""

from __future__ import annotations

import gc
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
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.access.middleware import AuthMiddleware, send_error
from app.batches import Batches
from app.core import logs
from app.core.errors import (
    GatewayError,
    body_too_large,
    error_body,
    file_too_large,
    insufficient_storage,
    store_unavailable,
)
from app.core.settings import Settings, load_settings
from app.gateway import Gateway
from app.openai import BY_PATH, Endpoint
from app.proxy.handler import Proxy
from app.server import admin, batches, console, files, models, openapi, probes, stored, usage
from app.server.bodies import bounded, declared_length
from app.server.multipart import FIELDS_LIMIT
from app.server.protocol import GuardedProtocol
from app.state import StoreDown, StoreFull

log = logging.getLogger("foundry_gateway")


class Dispatch:
    """The proxied ``POST`` endpoints go to the proxy, before FastAPI's routing; the rest to FastAPI, their bodies
    bounded in size (``app.server.bodies``; in time by the protocol, ``app.server.protocol``)."""

    def __init__(self, api: FastAPI, proxy: Proxy, settings: Settings) -> None:
        self.api = api
        self.proxy = proxy
        self.proxied: dict[str, Endpoint] = dict(BY_PATH)
        self.body_limit = settings.max_body_bytes
        self.file_limit = settings.max_file_bytes
        self.upload_limit = settings.max_file_bytes + FIELDS_LIMIT + 64 * 1024  # the form's boundaries besides

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        if scope["method"] == "POST":
            endpoint = self.proxied.get(path)
            if endpoint is not None:
                await self.proxy(scope, receive, send, endpoint)
                return
        upload = path == "/v1/files"
        limit = self.upload_limit if upload else self.body_limit
        too_large = file_too_large(self.file_limit) if upload else body_too_large(limit)
        declared = declared_length(scope["headers"])
        if declared is not None and declared > limit:
            await send_error(too_large, send)
            return
        await self.api(scope, bounded(receive, limit, too_large), send)


class HeaderLimit:
    """431 for requests whose headers are larger than ``GATEWAY_MAX_HEADER_BYTES`` in all."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.limit:
            await send_error(GatewayError(431, f"Request headers are larger than {self.limit} bytes.",
                                          code="headers_too_large"), send)
            return
        await self.app(scope, receive, send)


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

    @api.exception_handler(StoreFull)
    async def store_full(_: Request, exc: StoreFull) -> JSONResponse:
        return _error_response(insufficient_storage("the record"))

    @api.exception_handler(StoreDown)
    async def store_down(_: Request, exc: StoreDown) -> JSONResponse:
        return _error_response(store_unavailable())

    @api.exception_handler(ClientDisconnect)
    async def client_left(_: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody to read it: the client went, or stopped sending its body

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


def build_app(settings: Settings, gateway: Gateway | None = None, *, tune_gc: bool = False) -> ASGIApp:
    gw = gateway or Gateway(settings)
    proxy = Proxy(gw)
    batch_api = Batches(gw, proxy)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        await batch_api.runner.start()
        if tune_gc:
            quiet_collector()
        try:
            yield
        finally:
            await batch_api.runner.stop()  # first: a line must not meet a draining proxy and fail for it
            gw.draining = True
            await gw.stop()
            if gw.tracer is not None:
                gw.tracer.shutdown()  # the spans still batched go out before the process ends

    api = FastAPIOffline(  # /docs with Swagger UI served from the package, not a CDN
        title="foundry-gateway",
        version=__version__,
        description="One stable OpenAI-compatible URL in front of Foundry Local.",
        lifespan=lifespan,
    )
    api.state.gateway = gw
    api.state.batches = batch_api
    for part in (models.router, stored.router, files.router, batches.router, console.router, usage.router,
                 probes.router, admin.router,
                 openapi.router(settings.task_header)):
        api.include_router(part)
    _install_error_handlers(api)

    @api.get("/", include_in_schema=False)
    async def root() -> Response:
        return JSONResponse({"name": "foundry-gateway", "version": __version__, "openai_base_url": "/v1",
                             "docs": "/docs"})

    app: ASGIApp = Dispatch(api, proxy, settings)
    app = AuthMiddleware(app, gw.access, settings, gw.metrics)
    app = HeaderLimit(app, settings.max_header_bytes)
    if settings.cors_origins:
        app = CORSMiddleware(app, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                             allow_headers=["*"], expose_headers=["x-gateway-model", "x-gateway-task",
                                                                  "x-gateway-route", "x-request-id"])
    return app


def create_app(**overrides: Any) -> ASGIApp:
    """uvicorn factory: settings from the environment (``GATEWAY_*``)."""
    settings = load_settings(**overrides)
    logs.configure(settings.log_level)
    GuardedProtocol.configure(settings.header_timeout, settings.body_timeout, settings.max_unauthenticated_connections)
    return build_app(settings, tune_gc=True)


def quiet_collector() -> None:
    """Once started, the process's own objects (modules, FastAPI's routes, pydantic's models, the registry) are
    moved out of the cyclic collector's way (``gc.freeze``) and young collections made rarer: a request makes
    hundreds of short-lived objects, and each full collection walked the whole start-up heap again. Measured
    in docs/performance.md (about 5% of the gateway's CPU per request at 32 clients)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
