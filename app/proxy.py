"""The hot path: ``POST /v1/chat/completions`` and ``POST /v1/completions`` as a plain ASGI handler.

Every request pays for this code, so it avoids FastAPI's routing and dependency machinery, parses the
body once (orjson) and relays the upstream's bytes as they arrive. The flow:

  read + check body → route (task, RAM, inventory) → admit (global, then per-model FIFO) → load on
  demand → open upstream → first event → relay → metrics + one access-log line

Anything that fails before the first content byte reached the client may move on to the next
candidate model (fallback); after that, a stream ends with one OpenAI-style error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any, cast

import httpx
import orjson

from app import compat
from app.errors import GatewayError, upstream_error_from_body
from app.gateway import Gateway
from app.limiter import Limiter
from app.metrics import status_class as status_class_of
from app.registry import ModelEntry
from app.routing import Route
from app.streaming import EventSplitter, StreamInspector, error_event, event_json

Scope = MutableMapping[str, Any]
Message = dict[str, Any]

log = logging.getLogger("foundry_gateway.proxy")
_clock = time.perf_counter
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()


class Retry(Exception):
    """A failure before any content reached the client: the next candidate may take over."""

    def __init__(self, error: GatewayError, cause: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.cause = cause


class Exchange:
    """What one request did, for metrics and the access log."""

    __slots__ = (
        "aborted",
        "body",
        "cause",
        "entry",
        "error",
        "fallbacks",
        "finished",
        "load_wait",
        "queue_wait",
        "request_id",
        "route",
        "route_name",
        "started",
        "status",
        "stream",
        "task",
        "tpot",
        "ttft",
        "upstream_id",
        "upstream_wait",
        "usage",
    )

    def __init__(self, route_name: str, request_id: str) -> None:
        self.route_name = route_name
        self.request_id = request_id
        self.started = _clock()
        self.status = 0
        self.stream = False
        self.aborted = False
        self.finished = False
        self.task: str | None = None
        self.entry: ModelEntry | None = None
        self.route: Route | None = None
        self.upstream_id = ""
        self.body: dict[str, Any] | None = None
        self.ttft = 0.0
        self.tpot = 0.0
        self.upstream_wait = 0.0
        self.queue_wait = 0.0
        self.load_wait = 0.0
        self.usage: dict[str, Any] | None = None
        self.error = ""
        self.cause = ""
        self.fallbacks = 0


class Responder:
    """Starts the ASGI response lazily, so a stream can begin with keep-alive comments and still
    turn a late failure into an error event."""

    __slots__ = ("ex", "extra", "send", "started")

    def __init__(self, send: Any, ex: Exchange) -> None:
        self.send = send
        self.ex = ex
        self.started = False
        self.extra: list[tuple[bytes, bytes]] = [(b"x-request-id", ex.request_id.encode())]

    def set_route(self, entry: ModelEntry, task: str, header: str) -> None:
        self.extra = [
            (b"x-request-id", self.ex.request_id.encode()),
            (b"x-gateway-model", entry.name.encode()),
            (b"x-gateway-task", task.encode()),
            (b"x-gateway-route", header.encode("ascii", "replace")),
        ]

    async def start(self, status: int, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type), *self.extra]
        if content_type.startswith(b"text/event-stream"):
            headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        if extra:
            headers += extra
        self.started = True
        self.ex.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, more: bool = True) -> None:
        if not more:
            self.ex.finished = True
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def whole(
        self, status: int, content_type: bytes, data: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self.start(status, content_type, [(b"content-length", str(len(data)).encode()), *(extra or [])])
        await self.body(data, more=False)

    async def keepalive(self) -> None:
        if not self.started:
            await self.start(200, b"text/event-stream")
        await self.body(b": keep-alive\n\n")

    async def fail(self, err: GatewayError) -> None:
        self.ex.error = err.message
        if not self.started:
            headers = [(k.encode(), v.encode()) for k, v in err.headers.items()]
            await self.whole(err.status, b"application/json", err.to_bytes(), headers)
            return
        self.ex.status = err.status if self.ex.status == 200 else self.ex.status
        await self.body(error_event(err.message, err.type, err.code), more=False)


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
        request_id = rid.decode("latin-1")[:128] if rid else f"{_ID_PREFIX}-{next(_ids)}"
        ex = Exchange(route_name, request_id)
        reply = Responder(send, ex)
        watcher: asyncio.Task[None] | None = None
        self.metrics.in_flight.inc()
        try:
            try:
                self.gw.check_key(_text(headers.get(b"authorization")))
                if self.gw.draining:
                    raise GatewayError(503, "The gateway is shutting down.", code="shutting_down")
                raw = await self._read_body(receive, headers)
                if raw is None:
                    ex.aborted = True
                    return
                watcher = asyncio.ensure_future(self._watch(receive, ex, asyncio.current_task()))
                await self._serve(ex, reply, raw, _text(headers.get(self.task_header)))
            except GatewayError as err:
                if not ex.upstream_id:  # refused by the gateway itself, before any upstream call
                    self.metrics.rejections.labels(self.metrics.rejection_label(err.code)).inc()
                await reply.fail(err)
        except asyncio.CancelledError:
            if not ex.aborted:
                raise
            # the client went away: the upstream request was closed by the context managers below
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
            self.metrics.in_flight.dec()
            self._record(ex)

    # --- request ---------------------------------------------------------------------------------

    async def _read_body(self, receive: Any, headers: dict[bytes, bytes]) -> bytes | None:
        limit = self.settings.max_body_bytes
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

    async def _serve(self, ex: Exchange, reply: Responder, raw: bytes, task_header: str | None) -> None:
        gw = self.gw
        body = compat.parse_body(raw)
        compat.validate(body, ex.route_name, single_choice=gw.upstream.kind == "foundry")
        ex.body = body
        ex.stream = body.get("stream") is True
        route = gw.route(body.get("model"), task_header)
        ex.route, ex.task, ex.entry = route, route.task, route.model
        self.metrics.routing.labels(self.metrics.task_label(route.task), route.model.name, route.reason).inc()
        reply.set_route(route.model, route.task, route.header)

        candidates = (route.model, *route.fallbacks)
        for position, entry in enumerate(candidates):
            ex.entry = entry
            if position:
                reply.set_route(entry, route.task, f"fallback; {ex.cause} on {candidates[position - 1].name}")
            try:
                await self._attempt(ex, reply, entry, body)
                gw.breaker.success(entry.name)
                return
            except Retry as failure:
                ex.cause = failure.cause
                gw.breaker.failure(entry.name)
                if position + 1 >= len(candidates):
                    raise failure.error from None
                ex.fallbacks += 1
                self.metrics.fallbacks.labels(self.metrics.task_label(route.task), entry.name, failure.cause).inc()
                log.warning("request %s: %s failed (%s), falling back", ex.request_id, entry.name,
                            failure.error.message)

    # --- one attempt on one model ---------------------------------------------------------------------

    async def _attempt(self, ex: Exchange, reply: Responder, entry: ModelEntry, body: dict[str, Any]) -> None:
        gw = self.gw
        limiters: list[Limiter] = []
        gw.inventory.acquire(entry)
        try:
            if ex.stream:
                response, chunks, first = await self._with_keepalive(reply, self._open(ex, entry, body, limiters))
            else:
                response, chunks, first = await self._open(ex, entry, body, limiters)
            try:
                if ex.stream:
                    await self._relay_stream(ex, reply, response, chunks, first)
                else:
                    await self._relay_json(ex, reply, response, chunks)
            finally:
                await response.aclose()
        finally:
            for limiter in reversed(limiters):
                limiter.release()
            gw.inventory.release(entry)

    async def _with_keepalive(self, reply: Responder, opening: Any) -> Any:
        """Await ``opening``; while it takes longer than the keep-alive interval, send SSE comments."""
        task = asyncio.ensure_future(opening)
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=self.settings.keepalive_interval)
                if done:
                    return task.result()
                await reply.keepalive()
        except BaseException:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            elif not task.cancelled() and task.exception() is None:
                await task.result()[0].aclose()  # opened just as we were cancelled: do not leak it
            raise

    async def _open(
        self, ex: Exchange, entry: ModelEntry, body: dict[str, Any], limiters: list[Limiter]
    ) -> tuple[httpx.Response, AsyncIterator[bytes], bytes]:
        """Admit, load, send; return the response, its byte iterator and, for streams, the bytes up to
        the first complete event (Foundry Local may answer 200 with nothing but an error event)."""
        gw = self.gw
        for limiter in (gw.admission, gw.limiter(entry)):
            ex.queue_wait += await limiter.acquire()
            limiters.append(limiter)
        to_chat = ex.route_name == "completions" and not gw.upstream.has_completions
        upstream_route = "chat" if to_chat else ex.route_name
        default_max = None
        if gw.upstream.kind == "foundry":
            default_max = entry.max_tokens_default(self.settings.default_max_tokens)
        payload = compat.prepare_upstream_body(
            body, upstream_id=gw.inventory.upstream_id(entry), stream=ex.stream,
            default_max_tokens=default_max, to_chat=to_chat,
        )
        ex.upstream_id = gw.inventory.upstream_id(entry)
        for reload_once in (True, False):
            try:
                ex.load_wait += await gw.inventory.ensure_loaded(entry)
            except GatewayError as err:
                raise Retry(err, "load_failed") from None
            started = _clock()
            try:
                async with asyncio.timeout(self.settings.first_byte_timeout):
                    response = await gw.upstream.open(upstream_route, payload)
                    chunks = aiter(cast(httpx.AsyncByteStream, response.stream))  # raw bytes, no decoding layer
                    if response.status_code >= 400:
                        raw = await response.aread()
                        await response.aclose()
                        first = b""
                    else:
                        raw = b""
                        first = await self._first_event(response, chunks) if ex.stream else b""
            except TimeoutError:
                raise Retry(GatewayError(
                    504, f"Model '{entry.name}' sent nothing for {self.settings.first_byte_timeout:g}s.",
                    code="upstream_timeout"), "timeout") from None
            except httpx.HTTPError as exc:
                raise Retry(GatewayError(
                    503, f"Upstream unreachable for model '{entry.name}': {exc.__class__.__name__}: {exc}",
                    code="upstream_unavailable"), "connect") from None
            finally:
                ex.upstream_wait += _clock() - started
            if response.status_code < 400:
                if not ex.stream:
                    return response, chunks, first
                event = event_json(first)
                if not isinstance(event, dict):
                    await response.aclose()
                    raise Retry(GatewayError(502, "The upstream's stream did not start with a JSON event.",
                                             code="upstream_bad_response"), "bad_response")
                error = event.get("error")
                if error is None or "choices" in event:
                    return response, chunks, first
                await response.aclose()  # Foundry Local: HTTP 200 and a lone error event
                error = error if isinstance(error, dict) else {"message": str(error)}
                raw = orjson.dumps({"error": error})
                status = 400 if _is_client_error(error) else 502
            else:
                status = response.status_code
            message = raw.decode("utf-8", "replace")
            if status == 400 and "not loaded" in message.lower() and reload_once and gw.upstream.manages_models:
                gw.inventory.mark_unloaded(entry)  # unloaded behind our back: load and try once more
                continue
            failure = upstream_error_from_body(status, raw)
            if status == 404 and "model" in message.lower():
                gw.inventory.mark_missing(entry)
                raise Retry(GatewayError(503, f"Model '{entry.name}' is missing on the upstream: {failure.message}",
                                         code="model_unavailable"), "missing")
            if status >= 500 or status == 429:
                raise Retry(failure, f"http_{status}")
            raise failure
        raise Retry(GatewayError(503, f"Model '{entry.name}' could not be loaded.", code="model_load_failed"),
                    "load_failed")

    async def _first_event(self, response: httpx.Response, chunks: AsyncIterator[bytes]) -> bytes:
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            await response.aclose()
            raise Retry(GatewayError(502, f"The upstream answered a stream with '{content_type or 'no type'}'.",
                                     code="upstream_bad_response"), "bad_response")
        seen = b""
        async for chunk in chunks:  # up to the end of the first event that carries data
            seen += chunk
            data_at = seen.find(b"data:")
            if data_at >= 0 and (seen.find(b"\n\n", data_at) >= 0 or seen.find(b"\r\n\r\n", data_at) >= 0):
                break
        return seen

    # --- relaying --------------------------------------------------------------------------------

    async def _relay_json(
        self, ex: Exchange, reply: Responder, response: httpx.Response, chunks: AsyncIterator[bytes]
    ) -> None:
        started = _clock()
        loop = asyncio.get_running_loop()
        deadline = ex.started + self.settings.total_timeout
        idle = self.settings.idle_timeout
        rearm_at = 0.0  # the idle timer is re-armed at most every 5% of the timeout: it fires 95-100% idle after
        parts: list[bytes] = []
        try:
            async with asyncio.timeout(None) as timer:
                while True:  # chunk by chunk, so a body that stalls midway hits the idle timeout
                    now = loop.time()
                    if now >= rearm_at:  # re-arming a timer per chunk costs more than the chunk itself
                        timer.reschedule(now + min(idle, deadline - _clock()))
                        rearm_at = now + idle * 0.05
                    try:
                        parts.append(await chunks.__anext__())
                    except StopAsyncIteration:
                        break
            raw = b"".join(parts)
        except TimeoutError:
            raise Retry(GatewayError(504, f"The upstream stopped sending its answer for {idle:g}s.",
                                     code="upstream_timeout"), "timeout") from None
        except httpx.HTTPError as exc:
            raise Retry(GatewayError(502, f"Upstream failed mid-response: {exc.__class__.__name__}",
                                     code="upstream_error"), "broken") from None
        finally:
            ex.upstream_wait += _clock() - started
        content_type = response.headers.get("content-type", "application/json").split(",")[0].strip()
        if not content_type.startswith("application/json"):
            raise Retry(GatewayError(502, f"The upstream answered with '{content_type}', not JSON.",
                                     code="upstream_bad_response"), "bad_response")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Retry(GatewayError(502, "The upstream answered with invalid JSON.",
                                     code="upstream_bad_response"), "bad_response") from None
        if isinstance(data, dict):
            usage = data.get("usage")
            ex.usage = usage if isinstance(usage, dict) else None
            if ex.route_name == "completions" and not self.gw.upstream.has_completions:
                raw = orjson.dumps(compat.chat_to_completion(data))
        await reply.whole(response.status_code, b"application/json", raw)

    async def _relay_stream(
        self, ex: Exchange, reply: Responder, response: httpx.Response, chunks: AsyncIterator[bytes], first: bytes
    ) -> None:
        translate = ex.route_name == "completions" and not self.gw.upstream.has_completions
        inspector = StreamInspector(
            _clock, strip_usage=not compat.wants_usage(ex.body or {}),
            translate=compat.chat_to_completion if translate else None,
        )
        splitter = EventSplitter()
        loop = asyncio.get_running_loop()
        deadline = ex.started + self.settings.total_timeout
        idle = self.settings.idle_timeout
        rearm_at = 0.0  # the idle timer is re-armed at most every 5% of the timeout: it fires 95-100% idle after
        if not reply.started:
            await reply.start(response.status_code, b"text/event-stream")
        upstream_wait = 0.0
        ttft_pending = True
        try:
            block = splitter.feed(first)
            async with asyncio.timeout(None) as timer:
                while True:
                    if block:
                        out = inspector.block(block, splitter.sep)
                        if out:
                            await reply.body(out)
                        if ttft_pending and inspector.first_content:  # observed now, not when the stream ends
                            ttft_pending = False
                            ex.ttft = inspector.first_content - ex.started
                            self.metrics.series(ex.route_name, ex.task, ex.entry.name if ex.entry else None
                                                ).ttft.observe(ex.ttft)
                    now = loop.time()
                    if now >= rearm_at:  # re-arming a timer per chunk costs more than the chunk itself
                        timer.reschedule(now + min(idle, deadline - _clock()))
                        rearm_at = now + idle * 0.05
                    waited = _clock()
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        upstream_wait += _clock() - waited
                        break
                    upstream_wait += _clock() - waited
                    block = splitter.feed(chunk)
        except TimeoutError:
            timed_out = _clock() >= deadline
            await self._end_stream_with_error(ex, reply, GatewayError(
                504, "The request took longer than the total timeout." if timed_out else
                f"The upstream stalled for more than {idle:g}s mid-stream.", code="upstream_timeout"))
            return
        except httpx.HTTPError as exc:
            await self._end_stream_with_error(ex, reply, GatewayError(
                502, f"The upstream connection broke mid-stream ({exc.__class__.__name__}).", code="upstream_error"))
            return
        finally:
            ex.upstream_wait += upstream_wait
            ex.usage = inspector.usage
            if inspector.first_content:
                tokens = (inspector.usage or {}).get("completion_tokens") or 0
                if isinstance(tokens, int) and tokens > 1:
                    ex.tpot = (inspector.last_content - inspector.first_content) / (tokens - 1)
        if inspector.error is not None:
            ex.error = str(inspector.error.get("message", "upstream error event"))
            ex.status = 502
            await reply.body(b"", more=False)
            return
        if not inspector.done:
            await self._end_stream_with_error(ex, reply, GatewayError(
                502, "The upstream ended the stream without [DONE].", code="upstream_error"))
            return
        await reply.body(b"", more=False)

    async def _end_stream_with_error(self, ex: Exchange, reply: Responder, err: GatewayError) -> None:
        ex.status = err.status
        await reply.fail(err)

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _record(self, ex: Exchange) -> None:
        metrics = self.metrics
        elapsed = _clock() - ex.started
        model = ex.entry.name if ex.entry else None
        series = metrics.series(ex.route_name, ex.task, model)
        status_class = status_class_of(ex.status, ex.aborted)
        series.status[status_class].inc()
        series.duration.observe(elapsed)
        if ex.upstream_wait:
            series.upstream.observe(ex.upstream_wait)
        if ex.tpot:
            series.tpot.observe(ex.tpot)
        usage = ex.usage
        if usage:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and prompt > 0:
                series.input_tokens.inc(prompt)
            if isinstance(completion, int) and completion > 0:
                series.output_tokens.inc(completion)
        overhead = max(0.0, elapsed - ex.upstream_wait - ex.queue_wait - ex.load_wait)
        metrics.overhead.labels(ex.route_name).observe(overhead)
        if self.settings.access_log:
            self._log(ex, elapsed, overhead, status_class)

    def _log(self, ex: Exchange, elapsed: float, overhead: float, status_class: str) -> None:
        usage = ex.usage or {}
        line: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": ex.request_id,
            "route": ex.route_name,
            "task": ex.task,
            "model": ex.entry.name if ex.entry else None,
            "upstream_id": ex.upstream_id or None,
            "status": ex.status,
            "outcome": status_class,
            "stream": ex.stream,
            "reason": ex.route.reason if ex.route else None,
            "fallbacks": ex.fallbacks,
            "duration_ms": round(elapsed * 1000, 3),
            "ttft_ms": round(ex.ttft * 1000, 3) if ex.ttft else None,
            "upstream_ms": round(ex.upstream_wait * 1000, 3),
            "queue_ms": round(ex.queue_wait * 1000, 3),
            "load_ms": round(ex.load_wait * 1000, 3),
            "overhead_ms": round(overhead * 1000, 3),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
        }
        if ex.error:
            line["error"] = ex.error[:300]
        if self.settings.log_prompts and ex.body is not None:
            line["request"] = ex.body
        with contextlib.suppress(OSError, ValueError):
            self.out.write(orjson.dumps(line).decode() + "\n")


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _is_client_error(error: dict[str, Any]) -> bool:
    kind = str(error.get("type", ""))
    message = str(error.get("message", "")).lower()
    return kind == "invalid_request_error" and "not loaded" not in message and "not found" not in message
