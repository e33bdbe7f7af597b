"""A finished request in Prometheus: its status, latency, tokens, the cache's verdict and the gateway's overhead."""

from __future__ import annotations

from app.core.metrics import Metrics, status_class
from app.proxy.outcome import Outcome


class MetricsObserver:
    __slots__ = ("metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def observe(self, outcome: Outcome) -> None:
        metrics = self.metrics
        series = metrics.series(outcome.call.endpoint, outcome.task, outcome.model)
        series.status[status_class(outcome.status, outcome.aborted)].inc()
        series.duration.observe(outcome.duration, outcome.exemplar)
        if outcome.upstream_wait:
            series.upstream.observe(outcome.upstream_wait)
        if outcome.tpot:
            series.tpot.observe(outcome.tpot)
        cache = outcome.cache
        if cache is not None:
            metrics.cache_results[cache].inc()
        if cache is not None and not cache.generated:  # not generated: saved
            if (total := outcome.tokens("total_tokens")) > 0:
                metrics.cache_tokens_saved.inc(total)
        elif outcome.usage:
            if (prompt := outcome.tokens("prompt_tokens")) > 0:
                series.input_tokens.inc(prompt)
            if (completion := outcome.tokens("completion_tokens")) > 0:
                series.output_tokens.inc(completion)
        series.overhead.observe(outcome.overhead)
