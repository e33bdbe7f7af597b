"""Relaying an opened upstream response to the client: a JSON body whole, or an SSE stream event by event.

Every wait is bounded by the idle timeout and the request's total deadline — reading from the upstream
and writing to the client alike. A JSON body that fails can still move to another model (nothing
reached the client); a stream that fails after its first bytes ends with exactly one OpenAI-style error
event and marks the exchange ``broken`` (the circuit breaker counts it as the model's failure). A client
that stops reading without leaving is let go after the idle timeout (counted as aborted, nobody's
failure), so it cannot hold a model's slot and its upstream stream forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson

from app.core.errors import GatewayError, total_timeout
from app.core.metrics import Metrics
from app.core.timer import Timer
from app.openai.inspector import StreamInspector
from app.openai.sse import EventSplitter
from app.proxy.exchange import Exchange, Responder, clock
from app.upstream.errors import bad_response, broke_mid_answer, broke_mid_stream, stalled

Translate = Callable[[dict[str, Any]], dict[str, Any]]


class _IdleTimer:
    """The attempt's timer moved on each progress to the idle timeout from now (never past the deadline); a move
    later costs a float store. ``sending`` says whether the wait was for the client (it stopped reading) or the
    upstream."""

    __slots__ = ("deadline", "idle", "loop", "sending", "timer")

    def __init__(self, timer: Timer, idle: float, deadline: float) -> None:
        self.timer = timer
        self.idle = idle
        self.deadline = deadline
        self.loop = timer.loop
        self.sending = False

    def touch(self) -> None:
        due = self.loop.time() + self.idle
        self.timer.reschedule(due if due < self.deadline else self.deadline)

    def at_deadline(self) -> bool:
        return self.loop.time() >= self.deadline


async def relay_json(
    ex: Exchange, reply: Responder, response: httpx.Response, chunks: AsyncIterator[bytes], timer: Timer, *,
    idle_timeout: float, finish: Translate | None = None,
    usage_of: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda data: None, as_text: bool = False,
) -> None:
    """Read the whole answer, check it is JSON, note its usage, let ``finish`` rewrite it, send it (as plain
    text with ``as_text``: a transcription's text)."""
    started = clock()
    parts: list[bytes] = []
    idle = _IdleTimer(timer, idle_timeout, ex.call.deadline)
    try:
        idle.touch()
        with timer:
            while True:  # chunk by chunk, so a body that stalls midway hits the idle timeout
                idle.touch()
                try:
                    parts.append(await chunks.__anext__())
                except StopAsyncIteration:
                    break
            ex.upstream_wait += clock() - started
            started = 0.0
            raw, text = _checked_json(ex, response, b"".join(parts), finish, usage_of, as_text)
            if reply.keep is not None and response.status_code < 300:
                await reply.kept(ex.answer)  # before the client has it: its follow-up finds it
            idle.touch()
            idle.sending = True
            if as_text:
                await reply.whole(response.status_code, b"text/plain; charset=utf-8", text.encode())
            else:
                await reply.whole(response.status_code, b"application/json", raw)
    except TimeoutError:
        if idle.sending:
            ex.aborted = True  # the client stopped reading: let it go, blame nobody
            return
        if idle.at_deadline():
            raise total_timeout() from None
        raise stalled(idle_timeout) from None
    except httpx.HTTPError as exc:
        raise broke_mid_answer(exc) from None
    finally:
        if started:
            ex.upstream_wait += clock() - started


def _checked_json(
    ex: Exchange, response: httpx.Response, raw: bytes, finish: Translate | None,
    usage_of: Callable[[dict[str, Any]], dict[str, Any] | None], as_text: bool,
) -> tuple[bytes, str]:
    """The upstream's JSON answer as the client gets it (and its ``text`` field); usage noted for metrics."""
    content_type = response.headers.get("content-type", "application/json").split(",")[0].strip()
    if not content_type.startswith("application/json"):
        raise bad_response(f"The upstream answered with '{content_type}', not JSON.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_response("The upstream answered with invalid JSON.") from None
    text = ""
    if isinstance(data, dict):
        if finish is not None:
            data = finish(data)
            raw = orjson.dumps(data)
        ex.usage = usage_of(data)
        ex.answer = data
        text = str(data.get("text", "")) if as_text else ""
    return raw, text


async def relay_stream(
    ex: Exchange, reply: Responder, response: httpx.Response, chunks: AsyncIterator[bytes], first: bytes,
    timer: Timer, *,
    idle_timeout: float, metrics: Metrics, inspector: StreamInspector,
) -> None:
    splitter = EventSplitter()
    upstream_wait = 0.0
    ttft_pending = True
    idle = _IdleTimer(timer, idle_timeout, ex.call.deadline)
    try:
        idle.touch()
        with timer:
            idle.sending = True
            if not reply.started:
                await reply.start(response.status_code, b"text/event-stream")
            block = inspector.block(splitter.feed(first))
            while True:
                if block:
                    if inspector.done and reply.keep is not None:  # the end is in this block: keep it first
                        await reply.kept(inspector.final)
                    idle.sending = True
                    await reply.body(block)
                    ex.relayed.add(block)
                    if ttft_pending and inspector.first_content:  # observed now, not when the stream ends
                        ttft_pending = False
                        ex.ttft = inspector.first_content - ex.call.started
                        metrics.series(ex.call.endpoint, ex.task, ex.entry.name if ex.entry else None
                                       ).ttft.observe(ex.ttft, ex.trace.exemplar if ex.trace is not None else None)
                idle.touch()
                idle.sending = False
                waited = clock()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    upstream_wait += clock() - waited
                    break
                upstream_wait += clock() - waited
                block = inspector.block(splitter.feed(chunk))
            idle.sending = True
            tail = inspector.finish(splitter.flush())  # an unterminated last event still goes out
            if tail and inspector.done and reply.keep is not None:
                await reply.kept(inspector.final)
            if tail:
                await reply.body(tail)
                ex.relayed.add(tail)
            if inspector.error is None and inspector.done:
                await reply.body(b"", more=False)
                return
    except TimeoutError:
        if idle.sending:
            ex.aborted = True  # the client stopped reading: let it go, blame nobody
            return
        await _fail(ex, reply, total_timeout() if idle.at_deadline() else GatewayError(
            504, f"The upstream stalled for more than {idle_timeout:g}s mid-stream.", code="upstream_timeout"),
            idle_timeout)
        return
    except httpx.HTTPError as exc:
        await _fail(ex, reply, broke_mid_stream(exc), idle_timeout)
        return
    finally:
        ex.upstream_wait += upstream_wait
        ex.usage = inspector.usage
        ex.answer = inspector.final
        if inspector.first_content:
            tokens = (inspector.usage or {}).get("completion_tokens") or 0
            if isinstance(tokens, int) and tokens > 1:
                ex.tpot = (inspector.last_content - inspector.first_content) / (tokens - 1)
    if inspector.error is not None:  # the upstream's own error event went out as it came
        ex.error = str(inspector.error.get("message", "upstream error event"))
        ex.status = 502
        ex.broken = True
        await _bounded(ex, reply.body(b"", more=False), idle_timeout)
        return
    await _fail(ex, reply, GatewayError(502, "The upstream ended the stream before its end event.",
                                        code="upstream_error"), idle_timeout)


async def _fail(ex: Exchange, reply: Responder, err: GatewayError, idle_timeout: float) -> None:
    ex.status = err.status
    ex.broken = True
    await _bounded(ex, reply.fail(err), idle_timeout)


async def _bounded(ex: Exchange, send: Awaitable[None], idle_timeout: float) -> None:
    """A last send to the client, bounded: a client that reads nothing is let go."""
    try:
        async with asyncio.timeout(idle_timeout):
            await send
    except TimeoutError:
        ex.aborted = True
