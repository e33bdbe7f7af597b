"""Never generate the same answer twice: which requests use the response cache, their keys, answers from it, and
identical requests joined while they run (``app.proxy.flights``).

- **What is cached** (``GATEWAY_CACHE``): ``deterministic`` keeps answers meant to repeat — ``temperature`` 0, a
  ``seed``, embeddings; ``all`` keeps every successful answer; ``off``. Errors, cut or broken streams are never
  kept, nor the gateway's keep-alive and fallback comments.
- **The key**: the endpoint, the model that answers (its upstream id and registry fingerprint), every field of the
  body that changes the answer (all but ``stream``, ``stream_options``, ``user``, ``metadata``, ``model``),
  whether it streams (and with usage), and the key's name unless ``GATEWAY_CACHE_SCOPE=shared``.
- **Per request**, ``Cache-Control``: ``no-cache`` (do not read, do write), ``no-store`` (neither),
  ``max-age=N`` (accept a kept answer no older than N s).
- **An answer from the cache** looks like a generated one: the JSON as kept, or the stream's events as kept; a
  fresh ``id`` and ``created``; the usage the client would have spent; ``X-Gateway-Cache: hit|miss|bypass|
  coalesced``. Metrics count them apart (``gateway_cache_requests_total``, ``gateway_cache_tokens_saved_total``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from app.access.control import Access
from app.core.registry import ModelEntry
from app.core.settings import Settings
from app.gateway.cache import Entry, ResponseCache
from app.openai import Endpoint
from app.openai.sse import event_json, split_events
from app.proxy.exchange import Exchange, Responder
from app.proxy.flights import Flight
from app.proxy.outcome import CacheResult
from app.proxy.stages.semantic import SemanticIndex, Vector

JSON = dict[str, Any]
Embed = Callable[[str], Awaitable[list[float] | None]]
log = logging.getLogger("foundry_gateway.cache")
_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "model"})
_ROUTE_HEADERS = (b"x-gateway-model", b"x-gateway-task", b"x-gateway-route", b"x-gateway-node",
                  b"x-gateway-default-max-tokens")
_BYPASS, _MISS, _HIT = (((b"x-gateway-cache", result),) for result in (b"bypass", b"miss", b"hit"))
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")
_ID_TAIL = re.compile(r"[A-Za-z0-9]+$")
REPLAY_LIMIT = 16 << 20  # bytes of a generation recorded for late joiners and the cache


@dataclass(slots=True)
class Plan:
    """What the cache may do for one request."""

    key: str
    read: bool  # look for a kept answer, or a generation in flight (``no-cache``: generate, then keep)
    max_age: float | None
    stream: bool
    shared: bool = True  # identical requests in flight may join its generation (not a stored response's)
    scope: str = ""  # whose answer it is: the team key's name ("": shared, or no key)
    group: str | None = None  # the semantic cache's: what must match exactly besides the question
    question: str = ""  # the text compared by meaning
    vector: Vector | None = None  # its embedding, once asked


class Caching:
    def __init__(self, settings: Settings, cache: ResponseCache, access: Access,
                 embed: Embed | None = None) -> None:
        self.mode = settings.cache
        self.shared_scope = settings.cache_scope == "shared"
        self.charge = settings.cache_charge == "full"
        self.idle_timeout = settings.idle_timeout
        self.replay_limit = min(settings.cache_max_bytes, REPLAY_LIMIT)  # bigger answers are neither kept nor joined
        self.cache = cache
        self.access = access
        self.flights: dict[str, Flight] = {}
        self.semantic = SemanticIndex(settings.cache_semantic) if settings.cache_semantic > 0 else None
        # the embedding of a question (the proxy's: through the gateway itself), when the semantic cache is on
        self.embed = embed if self.semantic is not None else None

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def plan(self, endpoint: Endpoint, body: JSON, control: bytes | None, entry: ModelEntry, upstream_id: str,
             ex: Exchange, reply: Responder) -> Plan | None:
        """The request's plan, or None when the cache is bypassed (not eligible, ``no-store``)."""
        directives = control.decode("latin-1").lower() if control else ""
        if not endpoint.cacheable or "no-store" in directives or (
                self.mode != "all" and not endpoint.deterministic(body)):
            ex.cache = CacheResult.BYPASS
            reply.cache = _BYPASS
            return None
        found = _MAX_AGE.search(directives)
        scope = "" if self.shared_scope or ex.call.key is None else ex.call.key.name
        usage = ex.stream and isinstance(body.get("stream_options"), dict) and \
            bool(body["stream_options"].get("include_usage"))
        head = [endpoint.name, upstream_id, self.cache.fingerprints.get(entry.name, ""), scope, ex.stream, usage]
        plan = Plan(_digest(head, body), read="no-cache" not in directives,
                    max_age=float(found.group(1)) if found else None, stream=ex.stream,
                    shared=endpoint.shareable(body), scope=scope)
        split = endpoint.by_meaning(body) if self.semantic is not None and endpoint.deterministic(body) else None
        if split is not None:
            plan.question, plan.group = split[0], _digest(head, split[1])
        return plan

    # --- one request ----------------------------------------------------------------------------------------------

    async def answered(self, ex: Exchange, reply: Responder, plan: Plan) -> bool:
        """Answer from a kept answer, from an identical request's generation in flight, or (semantic cache) from
        the answer to a question close enough; False: generate."""
        looked = False
        while True:
            entry = await self.cache.get(plan.key, plan.max_age)
            if entry is not None:
                await self._admit(ex, reply, self.tokens(entry.usage))
                await self._send(ex, reply, entry)
                return True
            flight = self.flights.get(plan.key) if plan.shared else None
            if flight is not None and not flight.replayable:
                return False  # too big to replay: this request generates its own
            if flight is not None:
                if await self._follow(flight, ex, reply):
                    return True
                continue  # the leader failed before any content: look again (one of us leads now)
            if plan.group is None or looked:
                return False  # nothing awaited since the flights were looked at: the caller leads at once
            looked = True
            if await self._similar(ex, reply, plan):
                return True

    def lead(self, plan: Plan, ex: Exchange, reply: Responder) -> Flight:
        """This request generates, its messages recorded to be kept; identical requests that come meanwhile
        follow it (unless another generation of the same runs: a ``no-cache`` request generates on its own)."""
        ex.cache = CacheResult.MISS
        reply.cache = _MISS
        shared = plan.shared and plan.key not in self.flights
        flight = Flight(shared=shared, idle_timeout=self.idle_timeout, replay_limit=self.replay_limit)
        reply.send = flight.tee(reply.send)
        if shared:
            self.flights[plan.key] = ex.flight = flight
        return flight

    async def land(self, flight: Flight, plan: Plan, ex: Exchange) -> None:
        """The leader is done: its answer kept if it is whole, and the flight closed for its followers."""
        try:
            flight.usage = ex.usage
            entry = self.entry_of(flight, ex, plan)
            if entry is not None:
                await self.cache.put(plan.key, entry)
                if plan.group is not None:
                    await self._index(plan)
        finally:
            flight.finish()
            if self.flights.get(plan.key) is flight:
                del self.flights[plan.key]
            own = flight.own
            if own is not None and not await flight.delivered(own):  # the leader's client read on at its pace
                ex.aborted = True

    async def _admit(self, ex: Exchange, reply: Responder, tokens: int) -> None:
        """Answers not generated are free, unless GATEWAY_CACHE_CHARGE=full: then admitted and charged as usual."""
        if self.charge and ex.call.key is not None:
            ex.metered = ex.call.key.limited
            reply.quota = await self.access.admit(ex.call.key, ex.call.slot, tokens)

    async def _similar(self, ex: Exchange, reply: Responder, plan: Plan) -> bool:
        """Answer with the kept answer to the closest question, if it is close enough."""
        assert self.semantic is not None and plan.group is not None
        plan.vector = await self._embedding(plan.question)
        found = self.semantic.nearest(plan.group, plan.vector) if plan.vector is not None else None
        if found is None:
            return False
        key, similarity = found
        entry = await self.cache.get(key, plan.max_age)
        if entry is None:  # dropped from the cache since (its TTL, the byte bound, a registry change)
            self.semantic.forget(plan.group, key)
            return False
        await self._admit(ex, reply, self.tokens(entry.usage))
        await self._send(ex, reply, entry, similarity)
        return True

    async def _index(self, plan: Plan) -> None:
        """A kept answer's question in the semantic index."""
        assert self.semantic is not None and plan.group is not None
        if plan.vector is None:  # not asked before generating (``Cache-Control: no-cache``)
            plan.vector = await self._embedding(plan.question)
        if plan.vector is not None:
            self.semantic.add(plan.group, plan.vector, plan.key)

    async def _embedding(self, text: str) -> Vector | None:
        if self.embed is None:
            return None
        try:
            values = await self.embed(text)
        except Exception:  # the semantic cache is never worth a failed request
            log.exception("embedding a question for the semantic cache failed")
            return None
        return SemanticIndex.vector(values) if values else None

    async def _send(self, ex: Exchange, reply: Responder, entry: Entry, similarity: float | None = None) -> None:
        body, ex.answer = self.replay(entry)
        await reply.kept(ex.answer)  # a stored response, kept under its fresh id before the client has it
        ex.cache, ex.usage, ex.upstream_id = CacheResult.HIT, entry.usage, ""
        route = [(k.encode(), v.encode("latin-1")) for k, v in entry.headers]
        reply.extra = [(b"x-request-id", ex.call.request_id.encode()),
                       *((k, b"cache hit; " + v if k == b"x-gateway-route" else v) for k, v in route)]
        reply.cache = _HIT if similarity is None else \
            (*_HIT, (b"x-gateway-cache-similarity", f"{similarity:.4f}".encode()))
        if entry.stream:
            await reply.start(200, b"text/event-stream")
            await reply.body(body, more=False)
        else:
            await reply.whole(200, b"application/json", body)

    async def _follow(self, flight: Flight, ex: Exchange, reply: Responder) -> bool:
        """Relay the leader's messages to this client, from the first, at this client's pace; False if the leader
        failed before any."""
        start = await flight.message(0)
        if start is None or start["status"] >= 400:
            await flight.ended()  # did it fail, or only end badly?
            if flight.failed_before_content:
                return False
            start = flight.messages[0]
        await self._admit(ex, reply, 0)
        ex.cache = CacheResult.COALESCED
        own = [(b"x-request-id", ex.call.request_id.encode()), *reply.quota, (b"x-gateway-cache", b"coalesced")]

        def first(message: JSON) -> JSON:
            headers = [(k, v) for k, v in message["headers"]
                       if k not in (b"x-request-id", b"x-gateway-cache") and not k.startswith(b"x-ratelimit-")]
            return {**message, "headers": [*headers, *own]}

        listener = flight.listen(reply.send, first)
        if listener is None:  # it went past its replay limit meanwhile: this request generates its own
            return False
        ex.status, reply.started = start["status"], True
        try:
            if await flight.delivered(listener):
                ex.finished = True
                await flight.ended()
            else:
                ex.aborted = True  # it read nothing for the idle timeout, or fell too far behind: let go alone
        finally:
            flight.leave(listener)
        ex.usage, ex.answer = flight.usage, None
        return True

    # --- answers kept --------------------------------------------------------------------------------------------

    def entry_of(self, flight: Flight, ex: Exchange, plan: Plan) -> Entry | None:
        """What a finished generation leaves to keep, or None (an error, a broken or cut stream, too big)."""
        if ex.status != 200 or ex.broken or ex.entry is None or not flight.messages or not flight.replayable:
            return None
        start, parts = flight.messages[0], flight.messages[1:]
        if not parts or parts[-1].get("more_body", False):
            return None  # the answer never ended
        chunks = [m.get("body", b"") for m in parts]
        body = b"".join(c for c in chunks if not c.startswith(b":")) if plan.stream else b"".join(chunks)
        answer_id, created = _identity(body, ex.answer, plan.stream)
        headers = [(k.decode(), v.decode("latin-1")) for k, v in start["headers"] if k in _ROUTE_HEADERS]
        return Entry(stream=plan.stream, body=body, model=ex.entry.name, headers=headers, answer_id=answer_id,
                     created=created, usage=ex.usage, answer=ex.answer if plan.stream else None,  # JSON: the body
                     scope=plan.scope)

    def replay(self, entry: Entry) -> tuple[bytes, JSON | None]:
        """A kept answer as a new one: a fresh id and creation time (clients may tell answers apart by them), and
        the answer parsed (what a stored response keeps)."""
        body, answer = entry.body, entry.answer
        if entry.answer_id or entry.created:
            fresh_id = _ID_TAIL.sub(secrets.token_hex(12), entry.answer_id).encode()
            now = str(int(time.time())).encode()

            def renew(raw: bytes) -> bytes:
                if entry.answer_id:
                    raw = raw.replace(b'"%s"' % entry.answer_id.encode(), b'"%s"' % fresh_id)
                if entry.created:
                    raw = re.sub(rb'("created(?:_at)?"\s*:\s*)' + str(entry.created).encode() + rb"\b",
                                 rb"\g<1>" + now, raw)
                return raw

            body = renew(body)
            answer = orjson.loads(renew(orjson.dumps(answer))) if answer is not None else None
        if not entry.stream:
            answer = orjson.loads(body)
        return body, answer

    def tokens(self, usage: JSON | None) -> int:
        total = (usage or {}).get("total_tokens")
        return total if isinstance(total, int) else 0


def _digest(head: list[Any], body: JSON) -> str:
    """A cache key: ``head`` and every field of ``body`` that changes the answer, in a canonical form."""
    material = orjson.dumps([*head, {k: v for k, v in body.items() if k not in _IGNORED}],
                            option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(material).hexdigest()


def _identity(body: bytes, answer: JSON | None, stream: bool) -> tuple[str, int]:
    """The answer's own id and creation time, as they appear in ``body``."""
    data: Any = answer
    if stream:
        data = next((event_json(e) for e in split_events(body) if isinstance(event_json(e), dict)), None)
        if isinstance(data, dict) and isinstance(data.get("response"), dict):
            data = data["response"]  # the Responses API: its events carry the response object
    if not isinstance(data, dict):
        return "", 0
    found = data.get("id")
    created = data.get("created", data.get("created_at"))
    return (found if isinstance(found, str) else ""), (created if isinstance(created, int) else 0)
