"""One attempt: one model (in front mode: on one node), from admission to the last byte relayed.

  admit (backend) → ready: load on demand (backend) → send → read to the stream's first decisive event → relay

Ownership: everything the attempt takes — limiter slots, the model's turn and in-use mark, the upstream response,
a staged upload — is recorded in :class:`~app.proxy.backend.Held` the moment it is taken, and every way out
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

from app.core.errors import GatewayError, Retry, total_timeout
from app.core.tokens import counter
from app.gateway import Gateway
from app.openai import Endpoint, Target
from app.openai.sse import EventSplitter, event_data, event_json, split_events
from app.proxy.backend import Backend, Held, Place
from app.proxy.exchange import Exchange, Responder, clock
from app.proxy.keepalive import KeepAlive, retrieve
from app.proxy.relay import relay_json, relay_stream
from app.upstream.errors import bad_response, refusal, sent_nothing, transport_failure

_DONE_EVENT = b"[DONE]"


class Attempt:
    def __init__(self, gateway: Gateway, backend: Backend) -> None:
        self.settings = gateway.settings
        self.metrics = gateway.metrics
        self.backend = backend
        self.uploads = gateway.settings.foundry_cache_dir.resolve() / "uploads"

    async def run(self, ex: Exchange, reply: Responder, endpoint: Endpoint, body: dict[str, Any],
                  where: Place) -> None:
        ex.node = where.node
        ex.sent = False  # of this attempt: the breaker's verdict is about this model only
        self._budget(reply, endpoint, body, where)
        held = Held()
        trace = ex.trace
        if trace is not None:
            trace.attempt_begin(where.entry.name, where.node)
        failure: BaseException | None = None
        counting: asyncio.Future[int | None] | None = None
        texts = endpoint.counted_inputs(body)
        if texts is not None:  # the upstream reports no usage: counted meanwhile, off the event loop
            counting = asyncio.ensure_future(asyncio.to_thread(counter(where.entry.path), texts))
            counting.add_done_callback(retrieve)
        try:
            keepalive = KeepAlive(reply, self.settings.keepalive_interval) if ex.stream else None
            try:
                async with asyncio.timeout_at(ex.deadline) as timer:
                    response, chunks, first, target = await self._open(ex, endpoint, body, where, held, timer)
            except TimeoutError:
                if asyncio.get_running_loop().time() >= ex.deadline:
                    raise total_timeout(self.settings.total_timeout) from None
                raise sent_nothing(where.entry.name, self.settings.first_byte_timeout) from None
            finally:
                if keepalive is not None:
                    await keepalive.stop()
            if ex.stream:
                await relay_stream(ex, reply, response, chunks, first, idle_timeout=self.settings.idle_timeout,
                                   metrics=self.metrics, inspector=endpoint.inspector(body, target, clock))
            else:
                finish = endpoint.answer(body, target, await counting if counting is not None else None)
                await relay_json(ex, reply, response, chunks, idle_timeout=self.settings.idle_timeout, finish=finish,
                                 usage_of=endpoint.usage, as_text=endpoint.as_text(body))
            self.backend.completed(ex, where, held)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                await held.give_back()
            finally:
                if trace is not None:
                    trace.attempt_end(ex, failure)

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

    async def _open(self, ex: Exchange, endpoint: Endpoint, body: dict[str, Any], where: Place, held: Held,
                    timer: asyncio.Timeout) -> tuple[httpx.Response, AsyncIterator[bytes], bytes, Target]:
        """Admit, load, send; return the response (already ``held``), its byte iterator, for streams the bytes up
        to the first decisive event (Foundry Local may answer 200 with a lone error event), and the target."""
        trace = ex.trace
        queued = clock() if trace is not None else 0.0
        await self.backend.admit(ex, where, held)
        if trace is not None:
            trace.phase("queue", queued, clock())
        backend = self.backend
        upstream = backend.upstream(where)
        staged = endpoint.staged(body)  # an upload a runtime on this host reads from a file (None for most)
        staged = staged if staged is not None and upstream.reads_our_files else None
        staged_file = await self._stage(staged, held) if staged is not None else None
        sending = backend.sending()
        loop = asyncio.get_running_loop()
        while True:
            timer.reschedule(ex.deadline)
            loading, waited = (clock() if trace is not None else 0.0), ex.load_wait
            await backend.ready(ex, where, sending)
            if trace is not None and ex.load_wait > waited:
                trace.phase("model load", loading, clock())
            ex.upstream_id = backend.upstream_id(where)
            target = Target(ex.upstream_id, stream=ex.stream, default_max_tokens=backend.default_max_tokens(where),
                            has_completions=upstream.has_completions, parse_tool_calls=where.entry.parse_tool_calls,
                            staged_file=staged_file)
            payload, content_type = endpoint.payload(body, target)
            started = ex.sent_at = clock()
            timer.reschedule(min(ex.deadline, loop.time() + backend.first_byte_timeout()))
            error: dict[str, Any] | None = None
            raw = first = b""
            try:
                extra = backend.forwarded(ex)
                if trace is not None:
                    extra = [*(extra or ()), *trace.headers()]
                response = await upstream.open(endpoint.upstream_route(target), payload, content_type, extra)
                ex.sent = True
                held.responses.append(response)  # owned from its first byte
                chunks = aiter(cast(httpx.AsyncByteStream, response.stream))  # raw bytes, no decoding layer
                if response.status_code >= 400:
                    raw = await response.aread()
                elif ex.stream:
                    first, error = await self._first_events(response, chunks, endpoint)
            except httpx.HTTPError as exc:
                refused = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if isinstance(exc, httpx.ConnectError | httpx.ReadError | httpx.RemoteProtocolError) \
                        and await backend.reconnect(ex, sending, refused=refused):
                    continue
                raise transport_failure(where.entry.name, exc) from None
            finally:
                ex.upstream_wait += clock() - started
            if response.status_code < 400:
                if not ex.stream or error is None:
                    return response, chunks, first, target
                raw = orjson.dumps({"error": error})  # HTTP 200, then a failure before any content
                status = 400 if _is_client_error(error) else 502
            else:
                status = response.status_code
            message = raw.decode("utf-8", "replace")
            if status == 400 and "not loaded" in message.lower() and backend.reload(where, sending):
                await response.aclose()
                continue
            raise self._failure(endpoint, where, response, status, raw, message)

    def _failure(self, endpoint: Endpoint, where: Place, response: httpx.Response, status: int, raw: bytes,
                 message: str) -> Exception:
        """An upstream's refusal as the client hears it, or as a ``Retry`` when another model may do better."""
        failure = refusal(status, raw, where.entry.name)
        if status == 429 and (wait := response.headers.get("retry-after")):
            failure.headers["retry-after"] = wait  # the upstream (or node) said when: the client hears it
        if status >= 500 and (fault := endpoint.client_error(status, failure.message, where.entry.name)):
            return fault
        if status == 404 and "model" in message.lower():
            self.backend.missing(where)
            return Retry(GatewayError(503, f"Model '{where.entry.name}' is missing on the upstream: "
                                           f"{failure.message}", code="model_unavailable"), "missing")
        if status >= 500 or status == 429:
            return Retry(failure, f"http_{status}")
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


def _is_client_error(error: dict[str, Any]) -> bool:
    kind = str(error.get("type", ""))
    message = str(error.get("message", "")).lower()
    return kind == "invalid_request_error" and "not loaded" not in message and "not found" not in message
