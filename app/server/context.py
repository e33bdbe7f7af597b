"""What a route handler needs from its request: the gateway, and who is calling (decided by the middleware)."""

from __future__ import annotations

from fastapi import Request

from app.access.middleware import Caller, caller_of
from app.gateway import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def caller(request: Request) -> Caller:
    return caller_of(request.scope)
