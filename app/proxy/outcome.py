"""A proxied request in, what it did out: the frozen :class:`Call` (who asks what, by when) and the frozen
:class:`Outcome` the observers get once, at the end (``app.proxy.observers``).

Between the two the pipeline works on an :class:`~app.proxy.exchange.Exchange`; nothing after the last byte
reads it — the metrics, the access log, the trace, the console's recent list and the quota charge see only the
outcome, so none of them can change what another one sees.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.access.keys import ApiKey

_SLOT_PREFIX = os.urandom(6).hex()
_slots = itertools.count(1)


def next_slot() -> str:
    """A request's own id for quota slots (X-Request-Id is the client's, and may repeat)."""
    return f"{_SLOT_PREFIX}-{next(_slots)}"


class CacheResult(StrEnum):
    """What the response cache did for a request (``X-Gateway-Cache``; the metric's label)."""

    HIT = "hit"  # a kept answer
    MISS = "miss"  # generated, and kept if it may be
    BYPASS = "bypass"  # the request may not be answered from the cache (no-store, sampling, …)
    COALESCED = "coalesced"  # followed an identical request's generation

    @property
    def generated(self) -> bool:
        """Was the answer generated for this request (so it spent the model's time and the key's tokens)?"""
        return self not in (CacheResult.HIT, CacheResult.COALESCED)


@dataclass(frozen=True, slots=True)
class Call:
    """Who asks, on which endpoint, with what priority, by when — fixed before the body is read."""

    request_id: str
    endpoint: str  # the endpoint's name (``chat``, ``embeddings``…): the metrics' ``route``
    key: ApiKey | None  # the team key it came with (GATEWAY_KEYS_FILE)
    priority: str
    deadline: float  # event-loop time by which the whole request must be done
    started: float  # perf_counter when it arrived
    slot: str  # its own id for quota slots

    @classmethod
    def of(cls, endpoint: str, request_id: str, key: ApiKey | None = None, priority: str = "interactive",
           deadline: float = 0.0) -> Call:
        """A call arriving now, with its own slot."""
        return cls(request_id, endpoint, key, priority, deadline, time.perf_counter(), next_slot())


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request did, as the observers see it."""

    call: Call
    status: int  # 0: nothing was answered (the client left first)
    duration: float
    aborted: bool  # the client went away
    broken: bool  # the upstream failed after content reached the client
    stream: bool
    task: str | None
    model: str | None  # the registry's name of the model that answered (or was last tried)
    upstream_id: str
    node: str | None
    reason: str | None  # the routing's reason (None: it never got that far)
    explanation: str | None
    fallbacks: int
    cause: str  # the last failure's label (``timeout``, ``http_503``…)
    error: str
    usage: dict[str, Any] | None
    cache: CacheResult | None  # None: the cache is off
    metered: bool  # admitted against the key's quotas
    ttft: float
    tpot: float
    upstream_wait: float
    queue_wait: float
    load_wait: float
    body: dict[str, Any] | None  # as logged (prompts only with GATEWAY_LOG_PROMPTS)
    trace_id: str | None
    exemplar: dict[str, str] | None

    @property
    def overhead(self) -> float:
        """The gateway's own time: all of it but the upstream's, the queue's and the model load's."""
        return max(0.0, self.duration - self.upstream_wait - self.queue_wait - self.load_wait)

    def tokens(self, name: str) -> int:
        value = (self.usage or {}).get(name)
        return value if isinstance(value, int) else 0
