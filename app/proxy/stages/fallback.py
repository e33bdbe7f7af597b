"""Fallback over the places a route gives: the chosen model first, then its fallbacks (in front mode, each on the
nodes placement ranks for it). Anything that fails before the first content byte reached the client may move on
to the next place; after that a stream ends with one OpenAI-style error event. Each place's circuit breaker
permit is handed back with its verdict by the attempt's lease, as the backend that knows whose fault a failure
was decides."""

from __future__ import annotations

import logging
from typing import Any

from app.core.errors import FailureCause, GatewayError, Retry
from app.gateway import Gateway
from app.openai import Endpoint
from app.policy.routing import Route
from app.proxy.exchange import Exchange, Responder
from app.proxy.stages.attempt import Attempt
from app.proxy.stages.backend import Backend, Place

log = logging.getLogger("foundry_gateway.proxy")


class Fallback:
    def __init__(self, gateway: Gateway, backend: Backend) -> None:
        self.breaker = gateway.breaker
        self.metrics = gateway.metrics
        self.backend = backend
        self.attempt = Attempt(gateway, backend)

    async def run(self, ex: Exchange, reply: Responder, endpoint: Endpoint, body: dict[str, Any],
                  route: Route) -> None:
        places = self.backend.places(route)
        if places[0].node is not None:
            reply.set_route(route.model, route.task, f"{route.header}; node {places[0].node}: {places[0].why}",
                            node=places[0].node)
        failure: Retry | None = None
        for position, where in enumerate(places):
            permit = self.breaker.admit(where.entry.name)
            if permit is None:  # opened, or its probe is out, since the route was chosen
                why = self.breaker.skipped().get(where.entry.name, "cooling down")
                failure = failure or Retry(GatewayError(503, f"Model '{where.entry.name}': {why}.",
                                                        code="model_unavailable"), FailureCause.COOLING)
                continue
            ex.entry = where.entry
            if position:
                try:
                    await self._announce(ex, reply, route, places[position - 1], where)
                except BaseException:
                    self.breaker.cancel(permit)  # the client left: no verdict on the place
                    raise
            try:
                await self.attempt.run(ex, reply, endpoint, body, where, permit)  # the lease says the verdict
            except Retry as retry:
                failure = retry
                ex.cause = retry.label
                if position + 1 < len(places):
                    ex.fallbacks += 1
                    self.metrics.fallbacks.labels(self.metrics.task_label(route.task), where.entry.name,
                                                  retry.label).inc()
                    log.warning("request %s: %s failed (%s), falling back", ex.call.request_id, where.entry.name,
                                retry.error.message)
                continue
            return
        assert failure is not None
        raise failure.error

    @staticmethod
    async def _announce(ex: Exchange, reply: Responder, route: Route, previous: Place, where: Place) -> None:
        """Say the fallback: in ``X-Gateway-Route``, or in the stream if keep-alive comments already started it."""
        reply.set_route(where.entry, route.task, f"fallback; {ex.cause or 'cooling'} on {previous.where}"
                        + (f"; node {where.node}: {where.why}" if where.node else ""), node=where.node)
        if reply.started:
            await reply.body(f": fallback; {ex.cause or 'cooling'} on {previous.where}, now {where.where}\n\n".encode())
