"""One proxied request's record and its reply: what it did (for metrics and the access log) and a lazy
ASGI responder that lets a stream start with keep-alive comments and still end in an error event.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

import orjson

from app.access.keys import ApiKey
from app.core.errors import GatewayError
from app.core.metrics import Metrics
from app.core.metrics import status_class as status_class_of
from app.core.registry import ModelEntry
from app.core.tracing import RequestTrace
from app.openai.sse import error_event
from app.policy.routing import Route
from app.proxy.flights import Flight

clock = time.perf_counter


_SLOT_PREFIX = os.urandom(6).hex()
_slots = itertools.count(1)


class Exchange:
    """What one request did, for metrics and the access log."""

    __slots__ = (
        "aborted", "answer", "body", "broken", "cache", "cause", "deadline", "entry", "error", "fallbacks", "finished",
        "flight", "key",
        "load_wait", "metered", "node", "priority", "queue_wait", "relayed", "request_id", "route", "route_name",
        "sent", "sent_at", "slot", "started", "status", "stream", "task", "tpot", "trace", "ttft", "upstream_id",
        "upstream_wait", "usage",
    )

    def __init__(self, route_name: str, request_id: str) -> None:
        self.route_name = route_name
        self.request_id = request_id
        self.started = clock()
        self.deadline = 0.0  # event-loop time by which the whole request must be done
        self.status = 0
        self.stream = False
        self.aborted = False  # the client went away
        self.finished = False  # the last byte went to the client
        self.sent = False  # the request reached the upstream (as far as anyone can tell)
        self.broken = False  # the upstream failed after content reached the client
        self.priority = "interactive"
        self.key: ApiKey | None = None  # the team key it came with (GATEWAY_KEYS_FILE)
        self.metered = False  # admitted against the key's quotas: its usage is charged at the end
        self.node: str | None = None  # front mode: the node that answered
        self.slot = f"{_SLOT_PREFIX}-{next(_slots)}"  # its own id for quota slots (X-Request-Id is the client's)
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
        self.cache: str | None = None  # what the response cache did: hit, miss, bypass, coalesced (None: off)
        self.flight: Flight | None = None  # the generation it leads, which identical requests may follow
        self.error = ""
        self.cause = ""
        self.fallbacks = 0
        self.trace: RequestTrace | None = None  # its OpenTelemetry trace (None: tracing off)


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
        self.extra: list[tuple[bytes, bytes]] = [(b"x-request-id", ex.request_id.encode())]
        self.quota: list[tuple[bytes, bytes]] = []  # the key's x-ratelimit-* headers
        self.cache: tuple[tuple[bytes, bytes], ...] = ()  # X-Gateway-Cache
        self.budget: tuple[tuple[bytes, bytes], ...] = ()  # X-Gateway-Default-Max-Tokens, when the gateway chose it

    def set_route(self, entry: ModelEntry, task: str, header: str, node: str | None = None) -> None:
        self.extra = [
            (b"x-request-id", self.ex.request_id.encode()),
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


def record(ex: Exchange, metrics: Metrics, access_log: IO[str] | None, log_prompts: bool) -> None:
    """Metrics for a finished request, and its access-log line."""
    elapsed = clock() - ex.started
    series = metrics.series(ex.route_name, ex.task, ex.entry.name if ex.entry else None)
    status_class = status_class_of(ex.status, ex.aborted)
    series.status[status_class].inc()
    series.duration.observe(elapsed, ex.trace.exemplar if ex.trace is not None else None)
    if ex.upstream_wait:
        series.upstream.observe(ex.upstream_wait)
    if ex.tpot:
        series.tpot.observe(ex.tpot)
    usage = ex.usage
    if ex.cache is not None:
        metrics.cache_results[ex.cache].inc()
    if ex.cache in ("hit", "coalesced"):  # not generated: saved
        total = (usage or {}).get("total_tokens")
        if isinstance(total, int) and total > 0:
            metrics.cache_tokens_saved.inc(total)
    elif usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt > 0:
            series.input_tokens.inc(prompt)
        if isinstance(completion, int) and completion > 0:
            series.output_tokens.inc(completion)
    overhead = max(0.0, elapsed - ex.upstream_wait - ex.queue_wait - ex.load_wait)
    metrics.overhead.labels(ex.route_name).observe(overhead)
    if access_log is not None:
        _log(ex, access_log, elapsed, overhead, status_class, log_prompts)


def _log(ex: Exchange, out: IO[str], elapsed: float, overhead: float, status_class: str, log_prompts: bool) -> None:
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
    if usage.get("estimated"):
        line["usage_estimated"] = True  # the stream was cut before the upstream's usage came
    if ex.cache is not None:
        line["cache"] = ex.cache
    if ex.trace is not None:
        line["trace_id"] = ex.trace.trace_id
    if ex.error:
        line["error"] = ex.error[:300]
    if log_prompts and ex.body is not None:
        line["request"] = ex.body
    with contextlib.suppress(OSError, ValueError):
        out.write(orjson.dumps(line).decode() + "\n")
