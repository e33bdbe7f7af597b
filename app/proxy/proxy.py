"""The hot path: the proxied OpenAI endpoints (chat, completions, responses, embeddings, audio
transcriptions) as a plain ASGI handler; what differs between them lives in ``app.openai.endpoints``.

Every request pays for this code, so it avoids FastAPI's routing and dependency machinery, parses the
body once (orjson) and relays the upstream's bytes as they arrive. The flow:

  read + check body → route (task, RAM, inventory, breaker) → per candidate: admit (global, then
  per-model FIFO) → load on demand → open upstream → first event → relay → metrics + access log

Anything that fails before the first content byte reached the client may move on to the next
candidate model (fallback); after that, a stream ends with one OpenAI-style error event.

Ownership: everything an attempt takes — limiter slots, the model's in-use mark, the upstream
response — is recorded as held the moment it is taken, and every way out (success, timeout, the
client leaving, a bug) gives it back, the response first. Nobody's generation runs on unseen while
its slot is free, and no fallback starts while the first model still works on the same prompt.
``GATEWAY_TOTAL_TIMEOUT`` bounds all of it: queueing, loading, the first byte and the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import orjson

from app.core.errors import GatewayError, Retry, upstream_error_from_body
from app.core.registry import ModelEntry
from app.core.tokens import counter, estimate
from app.gateway.gateway import Gateway
from app.openai import compat, endpoints
from app.openai.endpoints import BY_NAME, Endpoint
from app.openai.sse import EventSplitter, event_data, event_json, split_events
from app.policy.breaker import Permit
from app.policy.limiter import PRIORITIES, Limiter
from app.policy.placement import place
from app.policy.residency import Residency
from app.policy.routing import Route, latency_budget
from app.proxy.exchange import Exchange, Responder, clock, record
from app.proxy.relay import relay_json, relay_stream
from app.upstream.client import Upstream
from app.upstream.inventory import Inventory

if TYPE_CHECKING:
    from app.upstream.fleet import Fleet

Scope = MutableMapping[str, Any]
Message = dict[str, Any]

log = logging.getLogger("foundry_gateway.proxy")
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()
_DONE_EVENT = b"[DONE]"
_PLAIN_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,7}")
# A client's X-Request-Id is kept if it is visible ASCII (it goes into headers, logs and nodes' requests), else
# the gateway's own id replaces it.
_VISIBLE_ID = re.compile(rb"[!-~]{1,128}")


class Proxy:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self.metrics = gateway.metrics
        self.task_header = gateway.settings.task_header.lower().encode()
        self.out = sys.stderr

    async def __call__(self, scope: Scope, receive: Any, send: Any, route_name: str) -> None:
        headers = dict(scope["headers"])  # last value wins: fine for the few headers read here
        rid = headers.get(b"x-request-id")
        request_id = rid.decode("ascii") if rid and _VISIBLE_ID.fullmatch(rid) else f"{_ID_PREFIX}-{next(_ids)}"
        ex = Exchange(route_name, request_id)
        ex.deadline = asyncio.get_running_loop().time() + self.settings.total_timeout
        reply = Responder(send, ex)
        watcher: asyncio.Task[None] | None = None
        self.metrics.in_flight.inc()
        try:
            try:
                ex.key = self.gw.authenticate(_text(headers.get(b"authorization")))
                if self.gw.draining:
                    raise GatewayError(503, "The gateway is shutting down.", code="shutting_down")
                raw = await self._read_body(receive, headers, self._body_limit(route_name))
                if raw is None:
                    ex.aborted = True
                    return
                ex.priority = _priority(headers.get(b"x-priority"), ex.key.priority if ex.key else None)
                watcher = asyncio.ensure_future(self._watch(receive, ex, asyncio.current_task()))
                await self._serve(ex, reply, raw, headers)
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
            log.exception("unhandled error in %s request %s", route_name, request_id)
            with contextlib.suppress(Exception):
                await reply.fail(GatewayError(500, f"Internal gateway error: {exc.__class__.__name__}"))
        finally:
            if watcher is not None:
                watcher.cancel()
            if ex.relayed and not isinstance((ex.usage or {}).get("completion_tokens"), int):
                await self._estimate_usage(ex)
            if ex.key is not None:
                await self._charge(ex)
            self.metrics.in_flight.dec()
            record(ex, self.metrics, self.out if self.settings.access_log else None, self.settings.log_prompts)
            self.gw.recent.observe(status=ex.status, ttft_s=ex.ttft, route=ex.route_name,
                                   model=ex.entry.name if ex.entry else None, task=ex.task,
                                   reason=ex.route.reason if ex.route else None,
                                   why=ex.route.explanation if ex.route else None, node=ex.node,
                                   duration_s=clock() - ex.started, request_id=ex.request_id)

    async def _charge(self, ex: Exchange) -> None:
        """The tokens that really came back count against the key (streams included), and its slot is freed."""
        usage = ex.usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        with contextlib.suppress(Exception):  # a quota store failing now is logged and counted by Access
            await self.gw.access.charge(ex.key, ex.slot, prompt if isinstance(prompt, int) else 0,
                                        completion if isinstance(completion, int) else 0, metered=ex.metered)

    async def _estimate_usage(self, ex: Exchange) -> None:
        """A stream cut before the upstream's usage came (the client left, the upstream broke): what was
        generated is counted from the content relayed (and the prompt from the request), with the model's
        tokenizer or at ~4 bytes a token — charged to the key and logged as estimated, never 0."""
        model_dir = ex.entry.path if ex.entry is not None else None
        prompt, generated = endpoints.prompt_texts(ex.body or {}), endpoints.generated_texts(ex.relayed.blocks)
        try:
            prompt_tokens, completion_tokens = await asyncio.to_thread(
                lambda: (estimate(model_dir, prompt), ex.relayed.scaled(estimate(model_dir, generated))))
        except Exception:  # an estimate is never worth a failed request
            log.exception("counting the tokens of request %s failed", ex.request_id)
            return
        ex.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens, "estimated": True}

    # --- request ---------------------------------------------------------------------------------

    def _body_limit(self, route_name: str) -> int:
        return self.settings.max_audio_bytes if route_name == "transcriptions" else self.settings.max_body_bytes

    async def _read_body(self, receive: Any, headers: dict[bytes, bytes], limit: int) -> bytes | None:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GatewayError(413, f"Request body is larger than {limit} bytes.", code="body_too_large")
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > limit:
                raise GatewayError(413, f"Request body is larger than {limit} bytes.", code="body_too_large")
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
                raise GatewayError(413, f"Request body is larger than {limit} bytes.", code="body_too_large")
            parts.append(part)
        return b"".join(parts)

    async def _watch(self, receive: Any, ex: Exchange, owner: asyncio.Task[Any] | None) -> None:
        """Cancel the request when the client disconnects, so the upstream stops generating."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not ex.finished and owner is not None:
                    ex.aborted = True
                    owner.cancel()
                return

    async def _serve(self, ex: Exchange, reply: Responder, raw: bytes, headers: dict[bytes, bytes]) -> None:
        gw = self.gw
        endpoint = BY_NAME[ex.route_name]
        if endpoint.name == "transcriptions":
            body = await endpoints.parse_upload(raw, _text(headers.get(b"content-type")) or "")
        else:
            body = compat.parse_body(raw)
        endpoints.validate(endpoint, body, single_choice=gw.upstream.kind == "foundry")
        ex.body = body if endpoint.name != "transcriptions" else {k: v for k, v in body.items() if k != "file"}
        ex.stream = endpoint.streams and body.get("stream") is True
        model = body.get("model")
        if isinstance(model, str) and model != model.strip():
            model = body["model"] = model.strip()  # the one name every check below and the routing see
        budget_header = headers.get(b"x-latency-budget-ms")
        budget = latency_budget(budget_header.decode("latin-1")) if budget_header is not None else None
        requested = model if isinstance(model, str) else None
        allowed = gw.access.allowed(ex.key, gw.registry)
        if ex.key is not None:
            gw.access.check_model(ex.key, gw.registry.lookup(requested) if requested else None, allowed)
        route = gw.route(requested, _text(headers.get(self.task_header)), endpoints.needs(endpoint, body), budget,
                         allowed)
        if ex.key is not None:  # decided on the entry that will really serve, whatever name asked for it
            for entry in (route.model, *route.fallbacks):
                gw.access.check_model(ex.key, entry, allowed)
        gw.access.check_task(ex.key, route.task)
        ex.route, ex.task, ex.entry = route, route.task, route.model
        if ex.key is not None:
            ex.metered = ex.key.limited  # before the await: a request cancelled mid-admission still frees its slot
            reply.quota = await gw.access.admit(ex.key, ex.slot)
        self.metrics.routing.labels(self.metrics.task_label(route.task), route.model.name, route.reason).inc()
        reply.set_route(route.model, route.task, route.header)

        attempts = self._attempts(route)
        if attempts[0][1] is not None:
            reply.set_route(route.model, route.task, f"{route.header}; node {attempts[0][1]}: {attempts[0][2]}",
                            node=attempts[0][1])
        failure: Retry | None = None
        for position, (entry, node, placed) in enumerate(attempts):
            permit = gw.breaker.admit(entry.name)
            if permit is None:  # opened, or its probe is out, since the route was chosen
                why = gw.breaker.skipped().get(entry.name, "cooling down")
                failure = failure or Retry(GatewayError(503, f"Model '{entry.name}': {why}.",
                                                        code="model_unavailable"), "cooling")
                continue
            ex.entry = entry
            try:
                if position:
                    previous, now = _where(*attempts[position - 1][:2]), _where(entry, node)
                    reply.set_route(entry, route.task, f"fallback; {ex.cause or 'cooling'} on {previous}"
                                    + (f"; node {node}: {placed}" if node else ""), node=node)
                    if reply.started:  # keep-alive comments already sent the headers: say it in the stream
                        await reply.body(f": fallback; {ex.cause or 'cooling'} on {previous}, now {now}\n\n".encode())
                await self._attempt(ex, reply, entry, body, node)
            except Retry as retry:
                failure = retry
                ex.cause = retry.cause
                overloaded = retry.cause == "http_429"  # busy, not failing: never the breaker's nor an outlier's
                if node is None and not overloaded:
                    gw.breaker.failure(permit, f"{retry.cause}: {retry.error.message}", transport=retry.transport)
                else:  # overloaded, or a node's fault (not the model's)
                    gw.breaker.cancel(permit)
                    if gw.fleet is not None and node is not None and retry.transport:
                        gw.fleet.eject(node, f"{retry.cause}: {retry.error.message}")
                    elif gw.fleet is not None and node is not None and not overloaded:
                        gw.fleet.failed(node, f"{retry.cause}: {retry.error.message}")
                if position + 1 < len(attempts):
                    ex.fallbacks += 1
                    self.metrics.fallbacks.labels(self.metrics.task_label(route.task), entry.name, retry.cause).inc()
                    log.warning("request %s: %s failed (%s), falling back", ex.request_id, entry.name,
                                retry.error.message)
                continue
            except GatewayError as err:
                self._verdict(permit, ex, healthy=err.status < 500 or node is not None, error=err.message)
                raise
            except BaseException:
                gw.breaker.cancel(permit)
                raise
            # a node that died mid-stream says nothing of the model on the other nodes
            self._verdict(permit, ex, healthy=not ex.broken or node is not None, error=ex.error)
            if node is not None and gw.fleet is not None:
                if ex.broken:
                    gw.fleet.failed(node, f"broken: {ex.error or 'the stream broke'}")
                elif ex.sent:
                    gw.fleet.succeeded(node)
            return
        assert failure is not None
        raise failure.error

    def _attempts(self, route: Route) -> list[tuple[ModelEntry, str | None, str]]:
        """(model, node, why that node) in the order to try: the route's models; in front mode each on the
        nodes the placement policy ranks for it."""
        fleet = self.gw.fleet
        models = (route.model, *route.fallbacks)
        if fleet is None:
            return [(entry, None, "") for entry in models]
        views, turn = fleet.views(), fleet.next_turn()
        attempts: list[tuple[ModelEntry, str | None, str]] = []
        refusals = []
        for entry in models:
            placement = place(entry.name, views, turn)
            reasons = {name: reason for name, _, reason in placement.verdicts}
            attempts += [(entry, name, reasons[name]) for name in placement.order]
            refusals += [f"{entry.name} on {name}: {reason}" for name, decision, reason in placement.verdicts
                         if decision == "skipped"]
        if not attempts:
            raise GatewayError(503, f"No node can serve this request now ({'; '.join(refusals) or 'no nodes'}).",
                               code="no_viable_node")
        return attempts

    def _verdict(self, permit: Permit, ex: Exchange, *, healthy: bool, error: str) -> None:
        breaker = self.gw.breaker
        if not ex.sent:
            breaker.cancel(permit)  # refused before the upstream saw it (queue full, deadline): no verdict
        elif healthy:
            breaker.success(permit)
        else:
            breaker.failure(permit, f"broken: {error or 'the upstream failed mid-response'}")

    # --- one attempt on one model ---------------------------------------------------------------------

    async def _attempt(self, ex: Exchange, reply: Responder, entry: ModelEntry, body: dict[str, Any],
                       node: str | None = None) -> None:
        gw = self.gw
        endpoint = BY_NAME[ex.route_name]
        upstream = gw.upstream
        if node is not None and gw.fleet is not None:
            member = gw.fleet.nodes.get(node)
            if member is None:  # left the fleet (re-resolution) since the placement
                raise Retry(GatewayError(503, f"Node {node} left the fleet.", code="upstream_unavailable"), "connect")
            upstream = member.upstream
        ex.node = node
        translate = compat.chat_to_completion if ex.route_name == "completions" and not upstream.has_completions \
            else None
        held = _Held()
        ex.sent = False  # of this attempt: the breaker's verdict is about this model only
        counting: asyncio.Future[int | None] | None = None
        if endpoint.name == "embeddings":  # the runtime reports no usage: counted meanwhile, off the event loop
            counting = asyncio.ensure_future(asyncio.to_thread(counter(entry.path), endpoints.embedding_inputs(body)))
            counting.add_done_callback(_retrieve)
        try:
            keepalive = _KeepAlive(reply, self.settings.keepalive_interval) if ex.stream else None
            try:
                async with asyncio.timeout_at(ex.deadline) as timer:
                    response, chunks, first = await self._open(ex, entry, body, held, timer, upstream, node)
            except TimeoutError:
                if asyncio.get_running_loop().time() >= ex.deadline:
                    raise GatewayError(504, f"The request took longer than the total timeout "
                                            f"({self.settings.total_timeout:g}s).", code="upstream_timeout") from None
                raise Retry(GatewayError(
                    504, f"Model '{entry.name}' sent nothing for {self.settings.first_byte_timeout:g}s.",
                    code="upstream_timeout"), "timeout") from None
            finally:
                if keepalive is not None:
                    await keepalive.stop()
            if ex.stream:
                await relay_stream(ex, reply, response, chunks, first, idle_timeout=self.settings.idle_timeout,
                                   metrics=self.metrics,
                                   inspector=endpoints.inspector(endpoint, body, clock, translate,
                                                                 parse_tool_calls=entry.parse_tool_calls))
            else:
                finish = endpoints.answer(endpoint, body, translate, parse_tool_calls=entry.parse_tool_calls,
                                          input_tokens=await counting if counting is not None else None)
                if endpoint.name == "transcriptions":
                    finish = endpoints.transcription_answer(body)
                await relay_json(ex, reply, response, chunks, idle_timeout=self.settings.idle_timeout,
                                 finish=finish, usage_of=lambda data: endpoints.usage_of(endpoint, data),
                                 as_text=endpoint.name == "transcriptions" and body.get("response_format") == "text")
            if node is not None:
                self.metrics.node_requests.labels(node, "failed" if ex.broken else "ok").inc()
            if held.model_limiter is not None and ex.status < 400 and not (ex.broken or ex.aborted):
                tokens = (ex.usage or {}).get("completion_tokens")
                gw.completed(entry, held.model_limiter, clock() - ex.sent_at,
                             tokens if isinstance(tokens, int) and tokens > 0 else 1, held.admitted_limit)
        finally:
            await held.give_back()

    async def _open(
        self, ex: Exchange, entry: ModelEntry, body: dict[str, Any], held: _Held, timer: asyncio.Timeout,
        upstream: Upstream, node: str | None,
    ) -> tuple[httpx.Response, AsyncIterator[bytes], bytes]:
        """Admit, load, send; return the response (already ``held``), its byte iterator and, for streams, the
        bytes up to the first complete event (Foundry Local may answer 200 with a lone error event).

        ``timer`` runs to the request's deadline, and to the first-byte deadline while the upstream has
        the request: one timer for both, its expiry told apart by the caller.

        In front mode (``node``) the node does the model's admission, loading and limits; the front only
        bounds its own in-flight total and counts what it sent where."""
        gw = self.gw
        if node is not None and gw.fleet is not None:
            ex.queue_wait += await gw.admission.acquire(ex.priority)
            held.limiters.append(gw.admission)
            gw.fleet.started(node, entry.name)
            held.front = (gw.fleet, node, entry.name)
            return await self._send(ex, entry, body, held, timer, upstream, node)
        model_limiter = gw.limiter(entry)
        for limiter in (gw.admission, model_limiter):
            ex.queue_wait += await limiter.acquire(ex.priority)
            held.limiters.append(limiter)
        held.model_limiter, held.admitted_limit = model_limiter, model_limiter.limit
        if upstream.manages_models:  # models that cannot co-reside take turns, grouped (no swap thrash)
            ex.queue_wait += await gw.residency.enter(entry.name)
            held.resident = (gw.residency, entry.name)
        gw.inventory.acquire(entry)  # in use from now on: never unloaded under this request
        held.in_use = (gw.inventory, entry)
        return await self._send(ex, entry, body, held, timer, upstream, None)

    async def _send(
        self, ex: Exchange, entry: ModelEntry, body: dict[str, Any], held: _Held, timer: asyncio.Timeout,
        upstream: Upstream, node: str | None,
    ) -> tuple[httpx.Response, AsyncIterator[bytes], bytes]:
        """Load if needed (not in front mode), send, and read to the stream's first decisive event."""
        gw = self.gw
        endpoint = BY_NAME[ex.route_name]
        loop = asyncio.get_running_loop()
        to_chat = ex.route_name == "completions" and not upstream.has_completions
        upstream_route = "chat" if to_chat else endpoint.name
        default_max = None
        if upstream.kind == "foundry":
            default_max = entry.max_tokens_default(self.settings.default_max_tokens)
        reloaded = recovered = False
        while True:
            timer.reschedule(ex.deadline)
            if node is None and not recovered and not gw.upstream_serving:  # a managed runtime restarts: wait
                recovered = await gw.upstream_recovered(ex.deadline)
            try:
                if node is None:
                    ex.load_wait += await gw.inventory.ensure_loaded(entry)
            except GatewayError as err:
                if err.code == "upstream_unavailable":
                    if not recovered and await gw.upstream_recovered(ex.deadline):
                        recovered = True
                        continue
                    raise Retry(err, "connect", transport=True) from None
                raise Retry(err, "load_failed") from None
            ex.upstream_id = gw.inventory.upstream_id(entry) if node is None else entry.name  # the node resolves it
            content_type = None
            if endpoint.name == "transcriptions":
                upload = await held.upload(gw, body) if upstream.reads_our_files else None
                payload, content_type = endpoints.transcription_body(body, ex.upstream_id, upload)
            else:
                payload = endpoints.prepare(endpoint, body, upstream_id=ex.upstream_id, stream=ex.stream,
                                            default_max_tokens=default_max, to_chat=to_chat)
            started = ex.sent_at = clock()
            # a node may queue the request and load the model before its first byte: its own timers bound those
            first_byte = self.settings.first_byte_timeout + (
                self.settings.queue_timeout + self.settings.load_timeout if node is not None else 0.0)
            timer.reschedule(min(ex.deadline, loop.time() + first_byte))
            try:
                forwarded = [("x-priority", ex.priority), ("x-request-id", ex.request_id)] if node else None
                response = await upstream.open(upstream_route, payload, content_type, forwarded)
                ex.sent = True
                held.responses.append(response)  # owned from its first byte
                chunks = aiter(cast(httpx.AsyncByteStream, response.stream))  # raw bytes, no decoding layer
                raw = first = b""
                error: dict[str, Any] | None = None
                if response.status_code >= 400:
                    raw = await response.aread()
                elif ex.stream:
                    first, error = await self._first_events(response, chunks, endpoint)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent. A managed runtime that just died comes back in about a second:
                # wait for it rather than fail (once per request).
                if isinstance(exc, httpx.ConnectError) and node is None and not recovered \
                        and await gw.upstream_recovered(ex.deadline):
                    recovered = True
                    continue
                raise Retry(GatewayError(
                    503, f"Upstream unreachable for model '{entry.name}': {exc}", code="upstream_unavailable"),
                    "connect", transport=True) from None
            except httpx.HTTPError as exc:
                raise Retry(GatewayError(
                    502, f"Upstream failed for model '{entry.name}': {exc.__class__.__name__}: {exc}",
                    code="upstream_error"), "broken") from None
            finally:
                ex.upstream_wait += clock() - started
            if response.status_code < 400:
                if not ex.stream or error is None:
                    return response, chunks, first
                raw = orjson.dumps({"error": error})  # HTTP 200, then a failure before any content
                status = 400 if _is_client_error(error) else 502
            else:
                status = response.status_code
            message = raw.decode("utf-8", "replace")
            if status == 400 and "not loaded" in message.lower() and not reloaded and upstream.manages_models:
                reloaded = True
                await response.aclose()
                gw.inventory.mark_unloaded(entry)  # unloaded behind our back: load and try once more
                continue
            failure = upstream_error_from_body(status, raw)
            if status == 429 and (wait := response.headers.get("retry-after")):
                failure.headers["retry-after"] = wait  # the upstream (or node) said when: the client hears it
            if status >= 500 and (fault := endpoints.client_error(endpoint, status, failure.message, entry.name)):
                raise fault
            if status == 404 and "model" in message.lower():
                gw.inventory.mark_missing(entry)
                raise Retry(GatewayError(503, f"Model '{entry.name}' is missing on the upstream: {failure.message}",
                                         code="model_unavailable"), "missing")
            if status >= 500 or status == 429:
                raise Retry(failure, f"http_{status}")
            raise failure

    async def _first_events(
        self, response: httpx.Response, chunks: AsyncIterator[bytes], endpoint: Endpoint
    ) -> tuple[bytes, dict[str, Any] | None]:
        """Read a stream up to the event that decides how it started (the first one for chat; the first
        text, the end or a failure for the Responses API): the bytes read so far, and the error if the
        upstream failed before any content (it may have said HTTP 200)."""
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise Retry(GatewayError(502, f"The upstream answered a stream with '{content_type or 'no type'}'.",
                                     code="upstream_bad_response"), "bad_response")
        splitter = EventSplitter()
        seen = b""
        async for chunk in chunks:
            seen += chunk
            for event in split_events(splitter.feed(chunk)):
                if event_data(event) is None:
                    continue
                data = event_json(event)
                if data is None and endpoint.name == "responses" and _DONE_EVENT in event:
                    return seen, None  # ended without deciding: the relay says so
                if not isinstance(data, dict):
                    raise Retry(GatewayError(502, "The upstream's stream did not start with a JSON event.",
                                             code="upstream_bad_response"), "bad_response")
                decisive, error = endpoints.stream_start(endpoint, data)
                if decisive:
                    return seen, error
        tail = splitter.flush()
        if event_data(tail) is not None and isinstance(data := event_json(tail), dict):
            return seen, endpoints.stream_start(endpoint, data)[1]
        if endpoint.name == "responses":
            return seen, None
        raise Retry(GatewayError(502, "The upstream's stream ended before its first event.",
                                 code="upstream_bad_response"), "bad_response")


class _Held:
    """What one attempt holds — limiter slots and upstream responses — given back on every way out:
    the responses first (the upstream stops generating), then the slots, whatever happens meanwhile."""

    __slots__ = ("admitted_limit", "files", "front", "in_use", "limiters", "model_limiter", "resident", "responses")

    def __init__(self) -> None:
        self.limiters: list[Limiter] = []
        self.responses: list[httpx.Response] = []
        self.model_limiter: Limiter | None = None
        self.admitted_limit = 0  # the model's limit when this request got its slot
        self.resident: tuple[Residency, str] | None = None  # its model's place on the runtime
        self.in_use: tuple[Inventory, ModelEntry] | None = None  # its model marked in use
        self.files: list[Path] = []  # uploads written for the runtime to read
        self.front: tuple[Fleet, str, str] | None = None  # front mode: (fleet, node, model) counted in flight

    async def upload(self, gw: Gateway, body: dict[str, Any]) -> str:
        """Write an uploaded audio file where a local runtime can read it (off the event loop); deleted with
        the attempt. Only the extension of the client's file name is kept, and only if it is plain."""
        filename, _, data = body["file"]
        suffix = Path(str(filename)).suffix
        path = gw.settings.foundry_cache_dir.resolve() / "uploads" / \
            f"{uuid.uuid4().hex}{suffix if _PLAIN_SUFFIX.fullmatch(suffix) else ''}"
        self.files.append(path)  # before writing: a partly written file is removed too

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise GatewayError(503, f"The audio could not be handed to the runtime: {exc.strerror or exc}.",
                               code="upload_failed") from None
        return str(path)

    async def give_back(self) -> None:
        try:
            for response in self.responses:
                with contextlib.suppress(Exception):
                    await response.aclose()
        finally:
            for path in self.files:
                path.unlink(missing_ok=True)
            if self.front is not None:
                fleet, node, model = self.front
                fleet.ended(node, model)
            if self.in_use is not None:
                inventory, entry = self.in_use
                inventory.release(entry)
            if self.resident is not None:
                residency, name = self.resident
                residency.leave(name)
            for limiter in reversed(self.limiters):
                limiter.release()


class _KeepAlive:
    """SSE comments every ``interval`` while a stream waits for its first event. A timer, not a task, until
    a comment is due: most streams start long before the first one."""

    __slots__ = ("handle", "interval", "loop", "reply", "sending")

    def __init__(self, reply: Responder, interval: float) -> None:
        self.reply = reply
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.sending: asyncio.Future[None] | None = None
        self.handle = self.loop.call_later(interval, self._due)

    def _due(self) -> None:
        if self.sending is None or self.sending.done():  # a slow client still busy with the last one: skip
            self.sending = asyncio.ensure_future(self.reply.keepalive())
            self.sending.add_done_callback(_retrieve)  # a client gone is the disconnect watcher's news
        self.handle = self.loop.call_later(self.interval, self._due)

    async def stop(self) -> None:
        """No more comments; one being sent finishes first, so the stream's own bytes come after it (a
        client that takes none for a whole interval gets no more: the relay then lets it go)."""
        self.handle.cancel()
        if self.sending is not None and not self.sending.done():
            await asyncio.wait((self.sending,), timeout=self.interval)
            self.sending.cancel()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _priority(value: bytes | None, default: str | None = None) -> str:
    """``X-Priority: interactive|batch`` (default: the key's, else interactive)."""
    if value is None:
        return default or "interactive"
    priority = value.decode("latin-1").strip().lower()
    if priority not in PRIORITIES:
        raise GatewayError(400, f"X-Priority must be one of {', '.join(PRIORITIES)}, not '{priority[:40]}'.",
                           code="invalid_value", param="X-Priority")
    return priority


def _where(entry: ModelEntry, node: str | None) -> str:
    return f"{entry.name} on node {node}" if node else entry.name


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _is_client_error(error: dict[str, Any]) -> bool:
    kind = str(error.get("type", ""))
    message = str(error.get("message", "")).lower()
    return kind == "invalid_request_error" and "not loaded" not in message and "not found" not in message
