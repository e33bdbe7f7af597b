"""One proxied request's working record (:class:`Exchange`) and its reply: a lazy ASGI responder that lets a
stream start with keep-alive comments and still end in an error event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.core.errors import GatewayError
from app.core.registry import ModelEntry
from app.core.tracing import RequestTrace
from app.openai.sse import error_event
from app.policy.routing import Route
from app.proxy.flights import Flight
from app.proxy.outcome import CacheResult, Call, Outcome

clock = time.perf_counter


class Exchange:
    """The pipeline's working record of one request, between its frozen :class:`Call` and its :class:`Outcome`:
    written by the stages as they go, read once at the end by :meth:`outcome`."""

    __slots__ = (
        "aborted", "answer", "body", "broken", "cache", "call", "cause", "entry", "error", "fallbacks", "finished",
        "flight", "load_wait", "metered", "node", "owner", "queue_wait", "relayed", "route", "sent", "sent_at",
        "status", "stream", "task", "tpot", "trace", "ttft", "upstream_id", "upstream_wait", "usage",
    )

    def __init__(self, call: Call, owner: asyncio.Task[Any] | None = None) -> None:
        self.call = call
        self.owner = owner  # the task serving it: what a timer or the client leaving cancels
        self.status = 0
        self.stream = False
        self.aborted = False  # the client went away
        self.finished = False  # the last byte went to the client
        self.sent = False  # the request reached the upstream (as far as anyone can tell)
        self.broken = False  # the upstream failed after content reached the client
        self.metered = False  # admitted against the key's quotas: its usage is charged at the end
        self.node: str | None = None  # front mode: the node that answered
        self.sent_at = 0.0  # when the request went to the upstream (for the adaptive limit's service time)
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
        self.relayed = Transcript()  # a stream's blocks as sent: what a client that left is charged for
        self.answer: dict[str, Any] | None = None  # the whole answer as the client got it (JSON, or a stream's end)
        self.cache: CacheResult | None = None  # what the response cache did (None: off)
        self.flight: Flight | None = None  # the generation it leads, which identical requests may follow
        self.error = ""
        self.cause = ""
        self.fallbacks = 0
        self.trace: RequestTrace | None = None  # its OpenTelemetry trace (None: tracing off)

    def outcome(self) -> Outcome:
        """What the request did, frozen: all the observers see."""
        route, trace = self.route, self.trace
        failed = self.status >= 400 or self.status == 0
        return Outcome(
            call=self.call, status=self.status, duration=clock() - self.call.started, aborted=self.aborted,
            broken=self.broken, stream=self.stream, task=self.task,
            model=self.entry.name if self.entry is not None else None, upstream_id=self.upstream_id, node=self.node,
            reason=route.reason if route is not None else None,
            explanation=self.error if failed and self.error else route.explanation if route is not None else None,
            fallbacks=self.fallbacks, cause=self.cause, error=self.error, usage=self.usage, cache=self.cache,
            metered=self.metered, ttft=self.ttft, tpot=self.tpot, upstream_wait=self.upstream_wait,
            queue_wait=self.queue_wait, load_wait=self.load_wait, body=self.body,
            trace_id=trace.trace_id if trace is not None else None,
            exemplar=trace.exemplar if trace is not None else None)


class Transcript:
    """What a stream relayed, kept to count its tokens if the upstream's usage never comes (the client left):
    the first 64 KiB as sent, and the size of the rest (its tokens scaled from the part kept). Appending costs
    nothing on the hot path; memory stays bounded however long the stream."""

    __slots__ = ("blocks", "kept", "total")
    KEEP = 64 * 1024

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.kept = 0
        self.total = 0

    def __bool__(self) -> bool:
        return self.total > 0

    def add(self, block: bytes) -> None:
        self.total += len(block)
        if self.kept < self.KEEP:
            self.blocks.append(block)
            self.kept += len(block)

    def scaled(self, tokens: int) -> int:
        """Tokens counted in the blocks kept, scaled to everything relayed."""
        return tokens if self.total <= self.kept else -(-tokens * self.total // max(self.kept, 1))


class Responder:
    """Starts the ASGI response lazily, so a stream can begin with keep-alive comments and still
    turn a late failure into an error event."""

    __slots__ = ("budget", "cache", "ex", "extra", "keep", "quota", "send", "started")

    def __init__(self, send: Any, ex: Exchange) -> None:
        self.send = send
        self.ex = ex
        self.started = False
        # what to keep of the whole answer before the client has its end (a stored response): a follow-up the
        # client sends the moment it has the answer finds it kept; called once, then None
        self.keep: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self.extra: list[tuple[bytes, bytes]] = [(b"x-request-id", ex.call.request_id.encode())]
        self.quota: list[tuple[bytes, bytes]] = []  # the key's x-ratelimit-* headers
        self.cache: tuple[tuple[bytes, bytes], ...] = ()  # X-Gateway-Cache
        self.budget: tuple[tuple[bytes, bytes], ...] = ()  # X-Gateway-Default-Max-Tokens, when the gateway chose it

    def set_route(self, entry: ModelEntry, task: str, header: str, node: str | None = None) -> None:
        self.extra = [
            (b"x-request-id", self.ex.call.request_id.encode()),
            (b"x-gateway-model", entry.name.encode()),
            (b"x-gateway-task", task.encode()),
            (b"x-gateway-route", header.encode("ascii", "replace")),
        ]
        if node is not None:  # front mode: the node that answers
            self.extra.append((b"x-gateway-node", node.encode("ascii", "replace")))

    async def start(self, status: int, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type), *self.extra, *self.quota, *self.cache, *self.budget]
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

    async def kept(self, answer: dict[str, Any] | None) -> None:
        """Keep ``answer`` now, if this request keeps one (once)."""
        keep, self.keep = self.keep, None
        if keep is not None and answer is not None:
            await keep(answer)

    async def fail(self, err: GatewayError) -> None:
        self.ex.error = err.message
        if not self.started:
            headers = [(k.encode(), v.encode()) for k, v in err.headers.items()]
            await self.whole(err.status, b"application/json", err.to_bytes(), headers)
            return
        self.ex.status = err.status if self.ex.status == 200 else self.ex.status
        await self.body(error_event(err.message, err.type, err.code), more=False)
