"""The routing stage: the model for a request's task on this host, within what its key may use."""

from __future__ import annotations

from typing import Any

from app.gateway import Gateway
from app.openai import Endpoint
from app.policy.routing import Route, latency_budget
from app.proxy.exchange import Exchange


class Routing:
    __slots__ = ("gw", "task_header")

    def __init__(self, gateway: Gateway, task_header: bytes) -> None:
        self.gw = gateway
        self.task_header = task_header

    def route(self, ex: Exchange, endpoint: Endpoint, body: dict[str, Any], headers: dict[bytes, bytes]) -> Route:
        """The route (``model`` as asked, else by ``X-Task`` or the default task, RAM, what is loaded, the breaker,
        ``X-Latency-Budget-Ms``), refused with a 403/404 when the key may not use what was asked or chosen."""
        gw, key = self.gw, ex.call.key
        model = body.get("model")
        requested = model if isinstance(model, str) else None
        budget_header = headers.get(b"x-latency-budget-ms")
        budget = latency_budget(budget_header.decode("latin-1")) if budget_header is not None else None
        allowed = gw.access.allowed(key, gw.registry)
        gw.access.check_model(key, gw.registry.lookup(requested) if requested else None, allowed)
        task = headers.get(self.task_header)
        route = gw.router.route(requested, task.decode("latin-1") if task is not None else None,
                                endpoint.needs(body), budget, allowed)
        gw.access.check_route(key, route, allowed)
        ex.route, ex.task, ex.entry = route, route.task, route.model
        return route
