"""One attempt: one model (in front mode: on one node), from admission to the last byte relayed.

  admit (backend) → ready: load on demand (backend) → send → read to the stream's first decisive event → relay

Ownership: everything the attempt takes — limiter slots, the model's turn and in-use mark, the upstream response,
a staged upload — is recorded in :class:`~app.proxy.stages.backend.Held` the moment it is taken, and every way out
(success, timeout, the client leaving, a bug) gives it back, the response first: nobody's generation runs on
unseen while its slot is free, and no fallback starts while the first model still works on the same prompt.
The request's deadline bounds all of it; while the upstream has the request, the first-byte timeout too (one
timer for both, its expiry told apart here).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import orjson

from app.core.errors import FailureCause, GatewayError, Retry, total_timeout
from app.core.timer import Timer
from app.core.tokens import counter
from app.core.tracing import RequestTrace
from app.gateway import Gateway
from app.openai import Endpoint, Target
from app.openai.sse import EventSplitter, event_data, event_json, split_events
from app.policy.breaker import Permit
from app.proxy.exchange import Exchange, Responder, clock
from app.proxy.stages.backend import Backend, Chance, Held, Lease, Place
from app.proxy.stages.keepalive import KeepAlive, retrieve
from app.proxy.stages.relay import relay_json, relay_stream
from app.upstream.client import Upstream
from app.upstream.errors import bad_response, sent_nothing, transport_failure
from app.upstream.errors import refusal as refusal_error
from app.upstream.profile import Refusal

_DONE_EVENT = b"[DONE]"


class _SendAgain(Exception):
    """A send that failed in a way the place may forgive once (:class:`~app.proxy.stages.backend.Chance`)."""

    def __init__(self, chance: Chance, failure: Exception) -> None:
        super().__init__(str(failure))
        self.chance = chance
        self.failure = failure


class Attempt:
    def __init__(self, gateway: Gateway, backend: Backend) -> None:
        self.settings = gateway.settings
        self.metrics = gateway.metrics
        self.backend = backend
        self.uploads = gateway.settings.foundry_cache_dir.resolve() / "uploads"

    async def run(self, ex: Exchange, reply: Responder, endpoint: Endpoint, body: dict[str, Any],
                  where: Place, permit: Permit) -> None:
        """Lease the place, send (once more if it forgives the failure), relay; the lease gives back what it held
        and says its one verdict on the place however this ends."""
        ex.node = where.node
        ex.sent = False  # of this attempt: the breaker's verdict is about this model only
        trace = ex.trace
        failure: BaseException | None = None
        try:
            async with self.backend.lease(ex, where, permit) as lease:
                if trace is not None:
                    trace.attempt_begin(where.entry.name, where.node)
                self._budget(reply, endpoint, body, where)
                counting: asyncio.Future[int | None] | None = None
                texts = endpoint.counted_inputs(body)
                if texts is not None:  # the upstream reports no usage: counted meanwhile, off the event loop
                    counting = asyncio.ensure_future(asyncio.to_thread(counter(where.entry.path), texts))
                    counting.add_done_callback(retrieve)
                keepalive = KeepAlive(reply, self.settings.keepalive_interval) if ex.stream else None
                deadline = ex.call.deadline
                task = ex.owner or asyncio.current_task()
                assert task is not None
                timer = Timer(task, deadline)  # the first byte's, then the answer's gaps; the deadline's always
                try:
                    with timer:
                        response, chunks, first, target = await self._open(ex, endpoint, body, lease, timer)
                except TimeoutError:
                    if asyncio.get_running_loop().time() >= deadline:
                        raise total_timeout(self.settings.total_timeout) from None
                    raise sent_nothing(where.entry.name, self.settings.first_byte_timeout) from None
                finally:
                    if keepalive is not None:
                        await keepalive.stop()
                if ex.stream:
                    await relay_stream(ex, reply, response, chunks, first, timer,
                                       idle_timeout=self.settings.idle_timeout, metrics=self.metrics,
                                       inspector=endpoint.inspector(body, target, clock))
                else:
                    finish = endpoint.answer(body, target, await counting if counting is not None else None)
                    await relay_json(ex, reply, response, chunks, timer, idle_timeout=self.settings.idle_timeout,
                                     finish=finish, usage_of=endpoint.usage, as_text=endpoint.as_text(body))
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if trace is not None and trace.recording:
                _end_span(trace, ex, failure)

    def _budget(self, reply: Responder, endpoint: Endpoint, body: dict[str, Any], where: Place) -> None:
        """An output budget over the model's context is a clear 400 before anything is sent; one the gateway adds
        (the request has none: Foundry Local needs one) is said in ``X-Gateway-Default-Max-Tokens``."""
        budget = endpoint.output_budget(body)
        context = where.entry.context_length
        if budget and context and budget > context:
            raise GatewayError(400, f"The output budget ({budget} tokens) exceeds the model's maximum context length: "
                               f"'{where.entry.name}' has a context of {context} tokens, the prompt included. Ask "
                               "for fewer (max_tokens, max_completion_tokens or max_output_tokens).",
                               code="context_length_exceeded", param="max_tokens")
        default = self.backend.default_max_tokens(where) if budget is None else None
        reply.budget = ((b"x-gateway-default-max-tokens", str(default).encode()),) if default is not None else ()

    async def _open(self, ex: Exchange, endpoint: Endpoint, body: dict[str, Any], lease: Lease,
                    timer: Timer) -> tuple[httpx.Response, AsyncIterator[bytes], bytes, Target]:
        """Admit, load, send; return the response (already held), its byte iterator, for streams the bytes up to
        the first decisive event (Foundry Local may answer 200 with a lone error event), and the target."""
        trace = ex.trace
        queued = clock() if trace is not None else 0.0
        upstream = await lease.admit()
        if trace is not None:
            trace.phase("queue", queued, clock())
        staged = endpoint.staged(body)  # an upload a runtime on this host reads from a file (None for most)
        staged = staged if staged is not None and upstream.reads_our_files else None
        staged_file = await self._stage(staged, lease.held) if staged is not None else None
        while True:
            timer.reschedule(ex.call.deadline)
            loading, waited = (clock() if trace is not None else 0.0), ex.load_wait
            ex.upstream_id = await lease.ready()
            if trace is not None and ex.load_wait > waited:
                trace.phase("model load", loading, clock())
            target = Target(ex.upstream_id, stream=ex.stream, default_max_tokens=self.backend.default_max_tokens(
                lease.where), has_completions=upstream.has_completions,
                parse_tool_calls=lease.where.entry.parse_tool_calls, staged_file=staged_file)
            try:
                return await self._send(ex, endpoint, body, lease, upstream, target, timer)
            except _SendAgain as again:
                if not await lease.again(again.chance):
                    raise again.failure from None

    async def _send(self, ex: Exchange, endpoint: Endpoint, body: dict[str, Any], lease: Lease, upstream: Upstream,
                    target: Target, timer: Timer
                    ) -> tuple[httpx.Response, AsyncIterator[bytes], bytes, Target]:
        """One send: the response once it decided how it starts, or the failure (``_SendAgain`` when the place
        may forgive it)."""
        where, trace = lease.where, ex.trace
        payload, content_type = endpoint.payload(body, target)
        started = ex.sent_at = clock()
        timer.reschedule(min(ex.call.deadline, asyncio.get_running_loop().time() + self.backend.first_byte_timeout()))
        error: dict[str, Any] | None = None
        raw = first = b""
        try:
            extra = self.backend.forwarded(ex)
            if trace is not None:
                extra = [*(extra or ()), *trace.headers()]
            response = await upstream.open(endpoint.upstream_route(target), payload, content_type, extra)
            ex.sent = True
            lease.held.responses.append(response)  # owned from its first byte
            chunks = aiter(cast(httpx.AsyncByteStream, response.stream))  # raw bytes, no decoding layer
            if response.status_code >= 400:
                raw = await response.aread()
            elif ex.stream:
                first, error = await self._first_events(response, chunks, endpoint)
        except httpx.HTTPError as exc:
            lost = transport_failure(where.entry.name, exc)
            if isinstance(exc, httpx.ConnectError):
                raise _SendAgain(Chance.REFUSED, lost) from None
            if isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
                raise _SendAgain(Chance.BROKE, lost) from None
            raise lost from None
        finally:
            ex.upstream_wait += clock() - started
        profile = upstream.profile
        if response.status_code < 400:
            if not ex.stream or error is None:
                return response, chunks, first, target
            raw = orjson.dumps({"error": error})  # HTTP 200, then a failure before any content
            status = profile.stream_error_status(error)
        else:
            status = response.status_code
        refusal = profile.refusal(status, raw.decode("utf-8", "replace"))
        failure = self._failure(endpoint, where, response, status, raw, refusal)
        if refusal is Refusal.NOT_LOADED:
            await response.aclose()
            raise _SendAgain(Chance.NOT_LOADED, failure)
        raise failure

    def _failure(self, endpoint: Endpoint, where: Place, response: httpx.Response, status: int, raw: bytes,
                 refusal: Refusal) -> Exception:
        """An upstream's refusal as the client hears it, or as a ``Retry`` when another model may do better."""
        failure = refusal_error(status, raw, where.entry.name)
        if refusal is Refusal.BUSY and (wait := response.headers.get("retry-after")):
            failure.headers["retry-after"] = wait  # the upstream (or node) said when: the client hears it
        if refusal is Refusal.FAILED and (fault := endpoint.client_error(status, failure.message, where.entry.name)):
            return fault
        if refusal is Refusal.MISSING:
            self.backend.missing(where)
            return Retry(GatewayError(503, f"Model '{where.entry.name}' is missing on the upstream: "
                                           f"{failure.message}", code="model_unavailable"), FailureCause.MISSING)
        if refusal is Refusal.BUSY:
            return Retry(failure, FailureCause.BUSY, status=status)
        if refusal is Refusal.FAILED:
            return Retry(failure, FailureCause.UPSTREAM_ERROR, status=status)
        return failure

    async def _stage(self, staged: tuple[str, bytes], held: Held) -> str:
        """Write an upload where a local runtime can read it (off the event loop); deleted with the attempt."""
        suffix, data = staged
        path = self.uploads / f"{uuid.uuid4().hex}{suffix}"
        held.files.append(path)  # before writing: a partly written file is removed too

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise GatewayError(503, f"The audio could not be handed to the runtime: {exc.strerror or exc}.",
                               code="upload_failed") from None
        return str(path)

    async def _first_events(self, response: httpx.Response, chunks: AsyncIterator[bytes],
                            endpoint: Endpoint) -> tuple[bytes, dict[str, Any] | None]:
        """Read a stream up to the event that decides how it started: the bytes read so far, and the error if
        the upstream failed before any content (it may have said HTTP 200)."""
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise bad_response(f"The upstream answered a stream with '{content_type or 'no type'}'.")
        splitter = EventSplitter()
        seen = b""
        async for chunk in chunks:
            seen += chunk
            for event in split_events(splitter.feed(chunk)):
                if event_data(event) is None:
                    continue
                data = event_json(event)
                if data is None and endpoint.ends_undecided and _DONE_EVENT in event:
                    return seen, None  # ended without deciding: the relay says so
                if not isinstance(data, dict):
                    raise bad_response("The upstream's stream did not start with a JSON event.")
                decisive, error = endpoint.stream_start(data)
                if decisive:
                    return seen, error
        tail = splitter.flush()
        if event_data(tail) is not None and isinstance(data := event_json(tail), dict):
            return seen, endpoint.stream_start(data)[1]
        if endpoint.ends_undecided:
            return seen, None
        raise bad_response("The upstream's stream ended before its first event.")


def _end_span(trace: RequestTrace, ex: Exchange, failure: BaseException | None) -> None:
    """The attempt's span ends with what this attempt did."""
    first_token = (ex.sent_at, ex.call.started + ex.ttft) if ex.ttft and ex.sent_at else None
    client_left = isinstance(failure, asyncio.CancelledError)
    error_type: str | None = None
    error = ""
    if isinstance(failure, Retry):
        error_type, error = failure.label, str(failure)
    elif failure is not None and not client_left:
        error_type, error = type(failure).__name__, str(failure)
    elif failure is None and ex.broken:  # the upstream failed after content reached the client
        error_type, error = "broken", ex.error or "the upstream failed mid-response"
    trace.attempt_end(response_model=ex.upstream_id if ex.sent and ex.upstream_id else None,
                      first_token=first_token, error_type=error_type, error=error, client_left=client_left)
