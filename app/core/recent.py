"""The last minutes of traffic, for the console (``/ui``) and ``foundry-gateway status``: request rate, error
rate and TTFT percentiles in 10-second buckets, and the last routing decisions with their reasons.

Prometheus has the full history; this is the glance an operator on a workstation wants without one. It is
bounded (60 buckets, 200 TTFT samples each, 50 decisions) and never holds prompt text.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

BUCKET_SECONDS = 10
BUCKETS = 60  # ten minutes
SAMPLES = 200


@dataclass
class Bucket:
    start: int
    requests: int = 0
    errors: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    by_key: dict[str, Bucket] = field(default_factory=dict)  # the same counts for each team key

    def count(self, status: int, ttft_s: float) -> None:
        self.requests += 1
        self.errors += status >= 500  # the gateway's or the upstream's failure; a client that left (0) is none
        if ttft_s and len(self.ttft_ms) < SAMPLES:
            self.ttft_ms.append(ttft_s * 1000)


def nearest_rank(values: list[float], q: float) -> float | None:
    """The q-quantile by the nearest-rank method (None for no values); ``bench`` uses it too."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(values: list[float], q: float) -> float | None:
    found = nearest_rank(values, q)
    return None if found is None else round(found, 1)


class Recent:
    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.buckets: deque[Bucket] = deque(maxlen=BUCKETS)
        self.decisions: deque[dict[str, Any]] = deque(maxlen=50)

    def observe(self, *, status: int, ttft_s: float, route: str, model: str | None, task: str | None,
                reason: str | None, why: str | None, node: str | None, duration_s: float, request_id: str,
                key: str | None = None) -> None:
        """One finished request: counted in its bucket (and its team key's), and listed among the last decisions
        when it was routed or refused (a refusal's reason is its error)."""
        now = self.clock()
        start = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
        if not self.buckets or self.buckets[-1].start != start:
            self.buckets.append(Bucket(start))
        bucket = self.buckets[-1]
        bucket.count(status, ttft_s)
        if key is not None:
            bucket.by_key.setdefault(key, Bucket(start)).count(status, ttft_s)
        if model is not None or status >= 400:
            self.decisions.append({"at": round(now, 3), "request_id": request_id, "endpoint": route, "model": model,
                                   "task": task, "reason": reason, "why": why, "node": node, "status": status,
                                   "duration_ms": round(duration_s * 1000, 1), "key": key})

    def decisions_of(self, key: str | None) -> list[dict[str, Any]]:
        """The last decisions, newest first: all of them, or one team key's."""
        return [d for d in reversed(self.decisions) if key is None or d["key"] == key]

    def series(self, key: str | None = None) -> list[dict[str, Any]]:
        """One row per 10 s over the last ten minutes (empty buckets included, so charts keep their time axis): all
        requests, or one team key's."""
        now = int(self.clock() // BUCKET_SECONDS) * BUCKET_SECONDS
        by_start = {b.start: b if key is None else b.by_key.get(key, Bucket(b.start)) for b in self.buckets}
        rows = []
        for start in range(now - (BUCKETS - 1) * BUCKET_SECONDS, now + 1, BUCKET_SECONDS):
            bucket = by_start.get(start, Bucket(start))
            rows.append({"t": start, "requests": bucket.requests, "errors": bucket.errors,
                         "requests_per_s": round(bucket.requests / BUCKET_SECONDS, 2),
                         "error_rate": round(bucket.errors / bucket.requests, 3) if bucket.requests else 0.0,
                         "ttft_p50_ms": _ms(bucket.ttft_ms, 0.5), "ttft_p95_ms": _ms(bucket.ttft_ms, 0.95)})
        return rows
