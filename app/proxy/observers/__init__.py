"""What happens to a request's :class:`~app.proxy.outcome.Outcome` once it is over: each observer gets it once,
after the last byte, and none of them can change what the client got or what another observer sees.

  Charge     the key's quotas charged with what it used (async: the quota store)
  Metrics    Prometheus series: status, latency, tokens, cache, the gateway's own overhead
  AccessLog  one JSON line per request (GATEWAY_ACCESS_LOG)
  Recent     the console's list of recent requests
  Usage      the usage book: who used which model, how much, at what cost (GET /v1/usage)
  Trace      the request's span ended with its attributes (tracing on)

The pipeline's stages never import this package (a checked contract in pyproject.toml): they return values,
the handler hands the outcome over.
"""

from __future__ import annotations

from typing import Protocol

from app.proxy.observers.access_log import AccessLog
from app.proxy.observers.charge import Charge
from app.proxy.observers.metrics import MetricsObserver
from app.proxy.observers.recent import Recent
from app.proxy.observers.trace import Trace
from app.proxy.observers.usage import UsageObserver
from app.proxy.outcome import Outcome


class Observer(Protocol):
    """Sees each request's outcome once, synchronously, after its last byte."""

    def observe(self, outcome: Outcome) -> None: ...


__all__ = ["AccessLog", "Charge", "MetricsObserver", "Observer", "Recent", "Trace", "UsageObserver"]
