"""The response cache's storage: answers by key, kept for ``GATEWAY_CACHE_TTL`` within ``GATEWAY_CACHE_MAX_BYTES``.

In this process by default — a dict in least-recently-used order, so a hit costs a dictionary lookup — or, with
``GATEWAY_REDIS_URL``, in the state store's Redis (compressed, Redis's own expiry), shared by every replica and
front. An entry is what a client got: a JSON body, or a stream's data events as sent, with the id and creation time
in it (replaced by fresh ones on every replay), the route that answered, and its usage.

A model's entries are dropped when its registry entry changes (its fingerprint is also part of every key, so
entries in a shared Redis are never served for a changed model either). Which requests may use the cache, the
keys, and joining identical requests in flight are ``app.proxy.stages.caching``'s.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.core.metrics import Metrics
from app.core.registry import ModelEntry, Registry
from app.core.settings import Settings
from app.state import StateStore, StoreDown

log = logging.getLogger("foundry_gateway.cache")
SPACE = "cache"
_TRIM_EVERY = 100


@dataclass(frozen=True, slots=True)
class Entry:
    stream: bool
    body: bytes  # the JSON answer, or the stream's data events (comments left out)
    model: str  # the registry model that answered
    headers: list[tuple[str, str]]  # X-Gateway-* of the answer that was kept
    answer_id: str = ""  # the id inside ``body`` (replaced on replay); "" when the answer has none
    created: int = 0  # its creation time inside ``body`` (replaced on replay); 0 when none
    usage: dict[str, Any] | None = None
    answer: dict[str, Any] | None = None  # the whole answer parsed (what a stored response keeps), if any
    kept_at: float = field(default_factory=time.time)
    scope: str = ""  # the team key whose answer it is ("": shared, or no key)

    def pack(self) -> bytes:
        """One bytes object: what Redis holds, and what this process holds (no objects for the collector to walk)."""
        head = {"stream": self.stream, "model": self.model, "headers": self.headers, "answer_id": self.answer_id,
                "created": self.created, "usage": self.usage, "answer": self.answer, "kept_at": self.kept_at,
                "scope": self.scope}
        return orjson.dumps(head) + b"\n" + self.body

    @classmethod
    def unpack(cls, raw: bytes) -> Entry:
        head, _, body = raw.partition(b"\n")
        fields = orjson.loads(head)
        fields["headers"] = [tuple(pair) for pair in fields["headers"]]
        return cls(body=body, **fields)


def fingerprint(entry: ModelEntry) -> str:
    """What in a model's registry entry changes its answers (a cache key carries it)."""
    return hashlib.sha1(orjson.dumps(entry.to_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


class ResponseCache:
    def __init__(self, settings: Settings, metrics: Metrics, store: StateStore | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl = settings.cache_ttl
        self.max_bytes = settings.cache_max_bytes
        self.metrics = metrics
        self.shared = store if settings.redis_url else None  # Redis: the replicas' cache; else this process's
        self.clock = clock
        self.fingerprints: dict[str, str] = {}
        self._entries: OrderedDict[str, tuple[bytes, str, str]] = OrderedDict()  # key: (packed, model, scope)
        self._bytes = 0
        self._puts = 0

    def apply(self, registry: Registry) -> None:
        """A new registry: the entries of models that changed or left are dropped."""
        now = {entry.name: fingerprint(entry) for entry in registry}
        for name in [n for n, old in self.fingerprints.items() if now.get(n) != old]:
            self.drop_model(name)
        self.fingerprints = now

    async def get(self, key: str, max_age: float | None = None) -> Entry | None:
        if self.shared is not None:
            try:
                record = await self.shared.get(SPACE, key)
            except StoreDown as exc:
                log.warning("cache unavailable: %s", exc)
                return None
            entry = Entry.unpack(record.value) if record is not None else None
        else:
            held = self._entries.get(key)
            entry = Entry.unpack(held[0]) if held is not None else None
            if held is not None:
                self._entries.move_to_end(key)
        if entry is None:
            return None
        age = self.clock() - entry.kept_at
        if age > self.ttl:
            self._forget(key)
            return None
        return entry if max_age is None or age <= max_age else None

    async def put(self, key: str, entry: Entry) -> None:
        packed = entry.pack()
        if len(packed) > self.max_bytes:
            return  # bigger than the whole cache (0: the cache keeps nothing)
        if self.shared is not None:
            try:
                await self.shared.put(SPACE, key, packed, owner=entry.scope, ttl=self.ttl)
                self._puts += 1
                if self._puts % _TRIM_EVERY == 1:
                    await self.shared.trim(SPACE, self.max_bytes)
            except StoreDown as exc:
                log.warning("cache unavailable: %s", exc)
            return
        self._forget(key)
        self._entries[key] = (packed, entry.model, entry.scope)
        self._bytes += len(packed)
        while self._bytes > self.max_bytes and self._entries:
            self._forget(next(iter(self._entries)))
        self.metrics.cache_bytes.set(self._bytes)

    def drop_model(self, name: str) -> None:
        for key in [k for k, (_, model, _) in self._entries.items() if model == name]:
            self._forget(key)
        self.metrics.cache_bytes.set(self._bytes)

    # --- for operators (``foundry-gateway cache``, ``/admin/cache``) ----------------------------------------------

    async def listing(self, scope: str | None, limit: int) -> list[dict[str, Any]]:
        """The kept answers (of one team key's scope; None: all), newest first: what they are, never their text."""
        rows: list[dict[str, Any]] = []
        if self.shared is not None:
            for record in await self.shared.scan(SPACE, owner=scope, limit=limit, newest_first=True):
                rows.append(_row(record.key, Entry.unpack(record.value), len(record.value)))
            return rows
        now = self.clock()
        for key, (packed, _, owner) in reversed(self._entries.items()):
            if scope is None or owner == scope:
                entry = Entry.unpack(packed)
                if now - entry.kept_at > self.ttl:
                    continue  # past its time: no request gets it (the next lookup drops it)
                rows.append(_row(key, entry, len(packed)))
                if len(rows) >= limit:
                    break
        return rows

    async def stats(self) -> dict[str, Any]:
        """How much is kept, where, and per team key."""
        if self.shared is not None:
            return {"where": "redis", "bytes": await self.shared.size(SPACE), "max_bytes": self.max_bytes,
                    "ttl_s": self.ttl}
        scopes: dict[str, int] = {}
        for _, _, scope in self._entries.values():
            scopes[scope] = scopes.get(scope, 0) + 1
        return {"where": "process", "entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                "ttl_s": self.ttl, "by_key": scopes}

    async def flush(self, scope: str | None) -> int:
        """Drop the kept answers (of one team key's scope; None: all); how many went. Only this process's, or every
        replica's with Redis."""
        if self.shared is not None:
            gone = 0
            while page := await self.shared.scan(SPACE, owner=scope, limit=500):
                for record in page:
                    gone += await self.shared.delete(SPACE, record.key)
            return gone
        keys = [k for k, (_, _, owner) in self._entries.items() if scope is None or owner == scope]
        for key in keys:
            self._forget(key)
        self.metrics.cache_bytes.set(self._bytes)
        return len(keys)

    def _forget(self, key: str) -> None:
        gone = self._entries.pop(key, None)
        if gone is not None:
            self._bytes -= len(gone[0])


def _row(key: str, entry: Entry, size: int) -> dict[str, Any]:
    return {"key": key[:16], "model": entry.model, "scope": entry.scope, "stream": entry.stream, "bytes": size,
            "age_s": round(time.time() - entry.kept_at, 1),
            "tokens": (entry.usage or {}).get("total_tokens")}
