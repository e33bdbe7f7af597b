"""The hot path: the proxied OpenAI endpoints (``app.openai.ENDPOINTS``) as one plain ASGI handler.

Every request pays for this code, so it avoids FastAPI's routing and dependency machinery, reads the body once and
relays the upstream's bytes as they arrive. The flow:

  read body → parse and check (the endpoint) → route (task, RAM, inventory, breaker) within the key's allow-lists
  → the response cache: a kept answer, or an identical request's generation to follow (``caching``) → the key's
  quotas → places in order (``fallback``) → per place one attempt (``attempt``: admit, load, send, relay) →
  the answer kept → metrics, access log, the key charged

Who is calling was decided before (``app.access.middleware``); where attempts run — this gateway's runtime or the
nodes of a front — is the backend's business (``app.proxy.backend``). ``GATEWAY_TOTAL_TIMEOUT`` bounds all of it.
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
from app.core import tracing
from app.core.errors import GatewayError, body_too_large, shutting_down
from app.core.registry import ModelEntry
from app.core.tokens import estimate
from app.gateway import Gateway
from app.openai import Endpoint
from app.openai.embeddings import Embeddings
from app.openai.endpoint import Memory
from app.openai.inspector import generated_texts
from app.policy.limiter import PRIORITIES
from app.policy.routing import latency_budget
from app.proxy.activity import Activity
from app.proxy.backend import LocalBackend, NodeBackend
from app.proxy.caching import Caching
from app.proxy.exchange import Exchange, Responder, clock, record
from app.proxy.fallback import Fallback
from app.proxy.semantic import embedder
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
        self.single_choice = gateway.upstream.kind == "foundry"  # Foundry Local silently ignores n > 1
        backend = NodeBackend(gateway) if gateway.fleet is not None else LocalBackend(gateway)
        self.fallback = Fallback(gateway, backend)
        self.caching = Caching(gateway.settings, gateway.cache, gateway.access)
        if self.caching.semantic is not None:
            self.caching.embed = embedder(self, Embeddings(), self.task_header)
        self.tracer = tracing.configure(gateway.settings)  # None unless OTEL_EXPORTER_OTLP_ENDPOINT is set
        self.activity = Activity()  # requests running by priority: what batches pace themselves by
        self.out = sys.stderr

    async def __call__(self, scope: Scope, receive: Any, send: Any, endpoint: Endpoint) -> None:
        headers = dict(scope["headers"])  # last value wins: fine for the few headers read here
        rid = headers.get(b"x-request-id")
        request_id = rid.decode("ascii") if rid and _VISIBLE_ID.fullmatch(rid) else f"{_ID_PREFIX}-{next(_ids)}"
        ex = Exchange(endpoint.name, request_id)
        ex.deadline = asyncio.get_running_loop().time() + self.settings.total_timeout
        if self.tracer is not None:
            ex.trace = self.tracer.request(headers, endpoint.operation, endpoint.path, request_id)
        caller = caller_of(scope)
        ex.key = caller.key
        reply = Responder(send, ex)
        watcher: asyncio.Task[None] | None = None
        self.metrics.in_flight.inc()
        try:
            try:
                if self.gw.draining:
                    raise shutting_down()
                raw = await self._read_body(receive, headers, endpoint.body_limit(self.settings))
                if raw is None:
                    ex.aborted = True
                    return
                ex.priority = _priority(headers.get(b"x-priority"), ex.key.priority if ex.key else None)
                watcher = asyncio.ensure_future(self._watch(receive, ex, asyncio.current_task()))
                self.activity.begin(ex.priority)
                try:
                    await self._serve(ex, reply, endpoint, raw, headers, caller)
                finally:
                    self.activity.end(ex.priority)
            except GatewayError as err:
                if not ex.upstream_id:  # refused by the gateway itself, before any upstream call
                    self.metrics.rejections.labels(self.metrics.rejection_label(err.code)).inc()
                await reply.fail(err)
        except asyncio.CancelledError:
            if not ex.aborted:
                raise
            # the client went away: what the request held was given back on the way out
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as exc:  # a bug must still give the client an OpenAI error, not a dropped connection
            log.exception("unhandled error in %s request %s", endpoint.name, request_id)
            with contextlib.suppress(Exception):
                await reply.fail(GatewayError(500, f"Internal gateway error: {exc.__class__.__name__}"))
        finally:
            if watcher is not None:
                watcher.cancel()
            try:
                await self._finish(ex, endpoint)
            finally:
                if ex.trace is not None:
                    ex.trace.finish(ex)  # last: it carries the usage _finish may have counted

    async def _serve(self, ex: Exchange, reply: Responder, endpoint: Endpoint, raw: bytes,
                     headers: dict[bytes, bytes], caller: Caller) -> None:
        """Parse and check the body, bring in what it refers to (a stored conversation), route it within what the
        key may use, answer it from the cache or an identical request in flight (``app.proxy.caching``), else
        admit it within the key's quotas and try the places; keep what later requests may refer to."""
        gw = self.gw
        body = await endpoint.parse(raw, _text(headers.get(b"content-type")) or "")
        endpoint.validate(body, single_choice=self.single_choice)
        ex.body = endpoint.logged(body)
        memory = gw.conversations.memory(caller, endpoint.body_limit(self.settings))
        asked = body  # as the client sent it: what a stored turn keeps
        if endpoint.keeps(asked):
            reply.keep = lambda answer: self._keep(ex, endpoint, asked, answer, memory)
        try:
            body = await endpoint.recall(body, memory)
        except StoreDown:
            raise GatewayError(503, "The state store is unavailable: a stored response cannot be read now.",
                               code="state_store_unavailable") from None
        ex.stream = endpoint.streams and body.get("stream") is True
        model = body.get("model")
        if isinstance(model, str) and model != model.strip():
            model = body["model"] = model.strip()  # the one name every check below and the routing see
        budget_header = headers.get(b"x-latency-budget-ms")
        budget = latency_budget(budget_header.decode("latin-1")) if budget_header is not None else None
        requested = model if isinstance(model, str) else None
        allowed = gw.access.allowed(ex.key, gw.registry)
        gw.access.check_model(ex.key, gw.registry.lookup(requested) if requested else None, allowed)
        route = gw.router.route(requested, _text(headers.get(self.task_header)), endpoint.needs(body), budget,
                                allowed)
        gw.access.check_route(ex.key, route, allowed)
        ex.route, ex.task, ex.entry = route, route.task, route.model
        plan = self.caching.plan(endpoint, body, headers.get(b"cache-control"), route.model,
                                 gw.inventory.upstream_id(route.model), ex, reply) if self.caching.on else None
        if plan is not None and plan.read and await self.caching.answered(ex, reply, plan):
            await self._remember(ex, reply)
            return
        flight = self.caching.lead(plan, ex, reply) if plan is not None else None
        try:
            if ex.key is not None:
                ex.metered = ex.key.limited  # before the await: a request cancelled mid-admission frees its slot
                tokens = await self._reservation(endpoint, body, route.model) if ex.key.counts_tokens else 0
                reply.quota = await gw.access.admit(ex.key, ex.slot, tokens)
            self.metrics.routing.labels(self.metrics.task_label(route.task), route.model.name, route.reason).inc()
            reply.set_route(route.model, route.task, route.header)
            await self.fallback.run(ex, reply, endpoint, body, route)
        finally:
            if flight is not None and plan is not None:
                await self.caching.land(flight, plan, ex)  # kept if whole; followers told it ended
        await self._remember(ex, reply)

    @staticmethod
    async def _remember(ex: Exchange, reply: Responder) -> None:
        """Keep what later requests may refer to (a stored response) if nothing kept it before the answer's end
        went out (``Responder.keep``: the relay and the cache do, so a follow-up sent at once finds it)."""
        if not (ex.broken or ex.aborted):
            await reply.kept(ex.answer)

    async def _keep(self, ex: Exchange, endpoint: Endpoint, body: dict[str, Any], answer: dict[str, Any],
                    memory: Memory) -> None:
        try:
            await endpoint.remember(body, answer, memory)
        except StoreDown as exc:  # the client gets its answer; a later reference to it will say not found
            log.error("request %s: its answer could not be stored: %s", ex.request_id, exc)

    async def _reservation(self, endpoint: Endpoint, body: dict[str, Any], entry: ModelEntry) -> int:
        """The tokens a request may spend, reserved against its key's token quota at admission: its prompt
        (counted with the model's tokenizer where the gateway has it, in a thread; else ~4 bytes a token) and its
        output budget (as asked, else the model's default) for each answer it asks for (``n``)."""
        texts = endpoint.prompt_texts(body)
        if entry.path is not None and (entry.path / "tokenizer.json").is_file():
            prompt = await asyncio.to_thread(estimate, entry.path, texts)
        else:
            prompt = estimate(None, texts)
        budget = endpoint.output_budget(body)
        if budget is None:
            budget = entry.max_tokens_default(self.settings.default_max_tokens)
        return prompt + budget * endpoint.choices(body)

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

    async def _watch(self, receive: Any, ex: Exchange, owner: asyncio.Task[Any] | None) -> None:
        """Cancel the request when the client disconnects, so the upstream stops generating."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if ex.finished or owner is None:
                    return
                ex.aborted = True
                if ex.flight is None or not ex.flight.client_left():  # a flight goes on while others listen
                    owner.cancel()
                return

    # --- after the last byte -------------------------------------------------------------------------------------

    async def _finish(self, ex: Exchange, endpoint: Endpoint) -> None:
        """Usage counted if the upstream's never came, the key charged, metrics, the access log, the console."""
        if ex.relayed and not isinstance((ex.usage or {}).get("completion_tokens"), int):
            await self._estimate_usage(ex, endpoint)
        free = ex.cache in ("hit", "coalesced") and not self.caching.charge  # not generated: not spent
        if ex.key is not None and not free:
            usage = ex.usage or {}
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            with contextlib.suppress(Exception):  # a quota store failing now is logged and counted by Access
                await self.gw.access.charge(ex.key, ex.slot, prompt if isinstance(prompt, int) else 0,
                                            completion if isinstance(completion, int) else 0, metered=ex.metered)
        self.metrics.in_flight.dec()
        record(ex, self.metrics, self.out if self.settings.access_log else None, self.settings.log_prompts)
        failed = ex.status >= 400 or ex.status == 0
        self.gw.recent.observe(status=ex.status, ttft_s=ex.ttft, route=ex.route_name,
                               model=ex.entry.name if ex.entry else None, task=ex.task,
                               reason=ex.route.reason if ex.route else "refused",
                               why=ex.error if failed and ex.error else ex.route.explanation if ex.route else None,
                               node=ex.node, duration_s=clock() - ex.started, request_id=ex.request_id,
                               key=ex.key.name if ex.key else None)

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
            log.exception("counting the tokens of request %s failed", ex.request_id)
            return
        ex.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens, "estimated": True}


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
