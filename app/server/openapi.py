"""The proxied endpoints in the OpenAPI document (``/docs``, ``/openapi.json``), generated from the endpoint table
(``app.openai.ENDPOINTS``): the proxy serves them before FastAPI sees a request, so these routes only describe
them — to people reading ``/docs`` and to clients and fuzzers reading the schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.core.errors import GatewayError
from app.openai import ENDPOINTS, Endpoint


def router(task_header: str) -> APIRouter:
    described = APIRouter()
    for endpoint in ENDPOINTS:
        described.add_api_route(endpoint.path, _served_by_the_proxy, methods=["POST"], summary=endpoint.summary,
                                name=endpoint.name, openapi_extra=_operation(endpoint, task_header))
    return described


async def _served_by_the_proxy() -> dict[str, Any]:
    raise GatewayError(500, "served by the proxy")  # pragma: no cover: the proxy answers these paths


def _operation(endpoint: Endpoint, task_header: str) -> dict[str, Any]:
    parameters = [{"name": task_header, "in": "header", "required": False, "schema": {"type": "string"},
                   "description": "Task used to pick a model when `model` is `auto` or absent (e.g. chat, code)."}]
    return {"requestBody": {"required": True, "content": endpoint.request_content()}, "parameters": parameters}
