"""What a route handler needs from its request: the gateway, and who is calling (decided by the middleware)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from app.access.middleware import Caller, caller_of
from app.gateway import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def caller(request: Request) -> Caller:
    return caller_of(request.scope)


def listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """One page of a list, in OpenAI's shape (files, batches, a response's input items)."""
    return {"object": "list", "data": data, "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None, "has_more": has_more}
