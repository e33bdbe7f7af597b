"""The hot path: the proxied OpenAI endpoints (``app.openai.ENDPOINTS``) as one plain ASGI handler.

Every request pays for this code, so it avoids FastAPI's routing and dependency machinery, reads the body once and
relays the upstream's bytes as they arrive. The flow:

  a frozen ``Call`` (who, which endpoint, priority, deadline) → read body → parse and check (the endpoint)
  → the stages (``app.proxy.stages``): routing → caching → quota → fallback → attempt (lease, send, relay)
  → the answer kept → the ``Outcome``, frozen, to each observer once (``app.proxy.observers``: the key charged,
  metrics, access log, the console's recent list, usage, the trace)

Who is calling was decided before (``app.access.middleware``); where attempts run — this gateway's runtime or the
nodes of a front — is the backend's business (``app.proxy.stages.backend``). ``GATEWAY_TOTAL_TIMEOUT`` bounds all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

from app.access.middleware import Caller, caller_of
from app.core.errors import GatewayError, body_too_large, shutting_down, store_unavailable
from app.core.tokens import estimate
from app.gateway import Gateway
from app.openai import Endpoint
from app.openai.embeddings import Embeddings
from app.openai.endpoint import StoredResponses
from app.openai.inspector import generated_texts
from app.policy.limiter import PRIORITIES
from app.proxy.activity import Activity
from app.proxy.exchange import Exchange, Responder, clock
from app.proxy.observers import AccessLog, Charge, MetricsObserver, Observer, Recent, Trace, UsageObserver
from app.proxy.outcome import Call, Outcome, next_slot
from app.proxy.stages.backend import LocalBackend, NodeBackend
from app.proxy.stages.caching import Caching
from app.proxy.stages.fallback import Fallback
from app.proxy.stages.quota import Quota
from app.proxy.stages.routing import Routing
from app.proxy.stages.semantic import embedder
from app.state import StoreDown

Scope = MutableMapping[str, Any]
log = logging.getLogger("foundry_gateway.proxy")
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()
# A client's X-Request-Id is kept if it is visible ASCII (it goes into headers, logs and nodes' requests), else
# the gateway's own id replaces it.
_VISIBLE_ID = re.compile(rb"[!-~]{1,128}")


class Proxy:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self.metrics = gateway.metrics
        self.task_header = gateway.settings.task_header.lower().encode()
        self.single_choice = gateway.upstream.profile.single_choice  # Foundry Local silently ignores n > 1
        backend = NodeBackend(gateway) if gateway.fleet is not None else LocalBackend(gateway)
        self.routing = Routing(gateway, self.task_header)
        self.quota = Quota(gateway.access, gateway.settings.default_max_tokens)
        self.fallback = Fallback(gateway, backend)
        self.caching = Caching(gateway.settings, gateway.cache, gateway.access,
                               embed=embedder(self, Embeddings(), self.task_header))
        self.tracer = gateway.tracer  # None unless OTEL_EXPORTER_OTLP_ENDPOINT is set
        self.activity = Activity()  # requests running by priority: what batches pace themselves by
        # what sees each request's outcome, once, at the end
        self.charge = Charge(gateway.access, cached_free=not self.caching.charge)
        self.observers: list[Observer] = [MetricsObserver(gateway.metrics)]
        if self.settings.access_log:
            self.observers.append(AccessLog(sys.stderr, self.settings.log_prompts))
        self.observers.append(Recent(gateway.recent))
        if gateway.usage is not None:
            self.observers.append(UsageObserver(gateway.usage, lambda: gateway.registry))
        self.trace = Trace(self.settings.log_prompts)

    async def __call__(self, scope: Scope, receive: Any, send: Any, endpoint: Endpoint) -> None:
        headers = dict(scope["headers"])  # last value wins: fine for the few headers read here
        rid = headers.get(b"x-request-id")
        request_id = rid.decode("ascii") if rid and _VISIBLE_ID.fullmatch(rid) else f"{_ID_PREFIX}-{next(_ids)}"
        caller = caller_of(scope)
        key = caller.key
        started = clock()
        refused: GatewayError | None = None  # said once the body is read (the client may still be sending it)
        try:
            priority = _priority(headers.get(b"x-priority"), key.priority if key else None)
        except GatewayError as err:
            priority, refused = "interactive", err
        call = Call(request_id, endpoint.name, key, priority,
                    asyncio.get_running_loop().time() + self.settings.total_timeout, started, next_slot())
        ex = Exchange(call, asyncio.current_task())
        if self.tracer is not None:
            ex.trace = self.tracer.request(headers, endpoint.operation, endpoint.path, request_id)
        reply = Responder(send, ex)
        watcher: _ClientWatch | None = None
        self.metrics.in_flight.inc()
        try:
            try:
                if self.gw.draining:
                    raise shutting_down()
                raw = await self._read_body(receive, headers, endpoint.body_limit(self.settings))
                if raw is None:
                    ex.aborted = True
                    return
                if refused is not None:
                    raise refused
                watcher = _ClientWatch(receive, ex)
                self.activity.begin(priority)
                try:
                    await self._serve(ex, reply, endpoint, raw, headers, caller)
                finally:
                    self.activity.end(priority)
            except GatewayError as err:
                if not ex.upstream_id:  # refused by the gateway itself, before any upstream call
                    self.metrics.rejections.labels(self.metrics.rejection_label(err.code)).inc()
                await reply.fail(err)
        except asyncio.CancelledError:
            if not ex.aborted:
                raise
            # the client went away: what the request held was given back on the way out
            if ex.owner is not None:
                ex.owner.uncancel()
        except Exception as exc:  # a bug must still give the client an OpenAI error, not a dropped connection
            log.exception("unhandled error in %s request %s", endpoint.name, request_id)
            with contextlib.suppress(Exception):
                await reply.fail(GatewayError(500, f"Internal gateway error: {exc.__class__.__name__}"))
        finally:
            if watcher is not None:
                watcher.stop()
            await self._finish(ex, endpoint)

    async def _serve(self, ex: Exchange, reply: Responder, endpoint: Endpoint, raw: bytes,
                     headers: dict[bytes, bytes], caller: Caller) -> None:
        """The stages in order (``app.proxy.stages``): parse and check the body, bring in what it refers to (a
        stored conversation), route it, answer it from the cache or an identical request in flight, else admit it
        within the key's quotas and try the route's places; keep what later requests may refer to."""
        body = await endpoint.parse(raw, _text(headers.get(b"content-type")) or "")
        endpoint.validate(body, single_choice=self.single_choice)
        ex.body = endpoint.logged(body)
        stored = self.gw.conversations.for_caller(caller, endpoint.body_limit(self.settings))
        asked = body  # as the client sent it: what a stored turn keeps
        if endpoint.keeps(asked):
            reply.keep = lambda answer: self._keep(ex, endpoint, asked, answer, stored)
        try:
            body = await endpoint.recall(body, stored)
        except StoreDown:
            raise store_unavailable() from None
        ex.stream = endpoint.streams and body.get("stream") is True
        model = body.get("model")
        if isinstance(model, str) and model != model.strip():
            body["model"] = model.strip()  # the one name every check below and the routing see
        route = self.routing.route(ex, endpoint, body, headers)
        caching = self.caching
        plan = caching.plan(endpoint, body, headers.get(b"cache-control"), route.model,
                            self.gw.inventory.upstream_id(route.model), ex, reply) if caching.on else None
        if plan is not None and plan.read and await caching.answered(ex, reply, plan):
            await self._remember(ex, reply)
            return
        flight = caching.lead(plan, ex, reply) if plan is not None else None
        try:
            reply.quota = await self.quota.admit(ex, endpoint, body, route.model)
            self.metrics.routing.labels(self.metrics.task_label(route.task), route.model.name, route.reason).inc()
            reply.set_route(route.model, route.task, route.header)
            await self.fallback.run(ex, reply, endpoint, body, route)
        finally:
            if flight is not None and plan is not None:
                await caching.land(flight, plan, ex)  # kept if whole; followers told it ended
        await self._remember(ex, reply)

    @staticmethod
    async def _remember(ex: Exchange, reply: Responder) -> None:
        """Keep what later requests may refer to (a stored response) if nothing kept it before the answer's end
        went out (``Responder.keep``: the relay and the cache do, so a follow-up sent at once finds it)."""
        if not (ex.broken or ex.aborted):
            await reply.kept(ex.answer)

    async def _keep(self, ex: Exchange, endpoint: Endpoint, body: dict[str, Any], answer: dict[str, Any],
                    stored: StoredResponses) -> None:
        try:
            await endpoint.remember(body, answer, stored)
        except StoreDown as exc:  # the client gets its answer; a later reference to it will say not found
            log.error("request %s: its answer could not be stored: %s", ex.call.request_id, exc)

    # --- the request's body and its client ---------------------------------------------------------------------

    async def _read_body(self, receive: Any, headers: dict[bytes, bytes], limit: int) -> bytes | None:
        """The whole body (None: the client left meanwhile, or stopped sending it: ``app.server.protocol``), a 413
        past ``limit``."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise body_too_large(limit)
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            if message["type"] == "http.disconnect":
                return None
            if len(body) > limit:
                raise body_too_large(limit)
            return body  # type: ignore[no-any-return]
        parts = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left while sending its body
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise body_too_large(limit)
            parts.append(part)
        return b"".join(parts)

    # --- after the last byte -------------------------------------------------------------------------------------

    async def _finish(self, ex: Exchange, endpoint: Endpoint) -> None:
        """Usage counted if the upstream's never came; then the outcome, frozen, to each observer once."""
        outcome: Outcome | None = None
        try:
            if ex.relayed and not isinstance((ex.usage or {}).get("completion_tokens"), int):
                await self._estimate_usage(ex, endpoint)
            outcome = ex.outcome()
            if outcome.call.key is not None:  # only a team key is charged: no coroutine for the rest
                await self.charge.observe(outcome)
            for observer in self.observers:
                observer.observe(outcome)
        finally:
            self.metrics.in_flight.dec()
            if ex.trace is not None:
                if outcome is not None:
                    self.trace.observe(outcome, ex.trace)
                else:  # the outcome could not be built (a bug, logged on the way out): the span still ends
                    ex.trace.finish({}, name=None, error="the gateway failed to finish the request", client_left=False)

    async def _estimate_usage(self, ex: Exchange, endpoint: Endpoint) -> None:
        """A stream cut before the upstream's usage came (the client left, the upstream broke): what was
        generated is counted from the content relayed (and the prompt from the request), with the model's
        tokenizer or at ~4 bytes a token — charged to the key and logged as estimated, never 0."""
        model_dir = ex.entry.path if ex.entry is not None else None
        prompt, generated = endpoint.prompt_texts(ex.body or {}), generated_texts(ex.relayed.blocks)
        try:
            prompt_tokens, completion_tokens = await asyncio.to_thread(
                lambda: (estimate(model_dir, prompt), ex.relayed.scaled(estimate(model_dir, generated))))
        except Exception:  # an estimate is never worth a failed request
            log.exception("counting the tokens of request %s failed", ex.call.request_id)
            return
        ex.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens, "estimated": True}


class _ClientWatch:
    """Cancels the request when its client disconnects, so the upstream stops generating — watched from
    ``WATCH_AFTER`` on: a request answered sooner needs no task of its own (a disconnect that came meanwhile is
    the first thing the watch reads)."""

    __slots__ = ("ex", "handle", "receive", "task")
    WATCH_AFTER = 0.02

    def __init__(self, receive: Any, ex: Exchange) -> None:
        self.receive = receive
        self.ex = ex
        self.task: asyncio.Task[None] | None = None
        self.handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(self.WATCH_AFTER, self._start)

    def _start(self) -> None:
        self.handle = None
        self.task = asyncio.ensure_future(self._watch())

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.task is not None:
            self.task.cancel()

    async def _watch(self) -> None:
        ex = self.ex
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if ex.finished or ex.owner is None:
                    return
                ex.aborted = True
                if ex.flight is None or not ex.flight.client_left():  # a flight goes on while others listen
                    ex.owner.cancel()
                return


def _priority(value: bytes | None, default: str | None = None) -> str:
    """``X-Priority: interactive|batch`` (default: the key's, else interactive)."""
    if value is None:
        return default or "interactive"
    priority = value.decode("latin-1").strip().lower()
    if priority not in PRIORITIES:
        raise GatewayError(400, f"X-Priority must be one of {', '.join(PRIORITIES)}, not '{priority[:40]}'.",
                           code="invalid_value", param="X-Priority")
    return priority


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
