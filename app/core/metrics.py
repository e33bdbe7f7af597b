"""Prometheus metrics (see docs/metrics.md for names, labels and PromQL).

Design notes:
- Label values are bounded: ``model`` is a registry name or ``other``, ``task`` a registry task or
  ``other``, ``route`` one of the proxied routes. A client naming random models cannot add series.
- Latency buckets span milliseconds to minutes (LLM calls); the gateway-overhead histogram starts at
  25 µs, because the point is to show a sub-millisecond cost that 5 ms buckets would hide.
- Label children are cached per (route, task, model): ``labels()`` takes a lock and a dict lookup,
  which is measurable on the hot path.
- Multi-worker: when ``PROMETHEUS_MULTIPROC_DIR`` is set (the CLI sets and cleans it for
  ``--workers > 1``), prometheus-client's multiprocess mode aggregates the workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.openmetrics import exposition as openmetrics

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0,
)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TPOT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
OVERHEAD_BUCKETS = (
    0.000025, 0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25,
)
LOAD_BUCKETS = (0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

OTHER = "other"
# Error codes the gateway itself raises before calling the upstream (the `reason` label of rejections).
REJECTION_REASONS = frozenset({
    "invalid_json", "invalid_type", "invalid_value", "missing_required_parameter", "unsupported_value",
    "unknown_task", "model_not_found", "no_viable_model", "insufficient_ram", "model_unavailable",
    "overloaded", "invalid_api_key", "expired_api_key", "body_too_large", "headers_too_large", "shutting_down",
    "request_timeout", "insufficient_storage", "conversation_too_large", "previous_response_not_found",
})
STATUS_CLASSES = ("2xx", "4xx", "5xx", "aborted")
CACHE_RESULTS = ("hit", "miss", "bypass", "coalesced")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """All gateway metrics on one registry (a fresh one per instance, so tests can make several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        route_labels = ("route", "task", "model")
        self.requests = Counter(
            "gateway_requests", "Proxied requests by route, task, model and status class.",
            (*route_labels, "status_class"), registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "End-to-end request duration as the client sees it (gen_ai.server.request.duration).",
            route_labels, buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streams: request start to the first content chunk sent to the client "
            "(gen_ai.server.time_to_first_token).",
            route_labels, buckets=TTFT_BUCKETS, registry=r,
        )
        self.tpot = Histogram(
            "gateway_time_per_output_token_seconds",
            "Streams: time per output token after the first (gen_ai.server.time_per_output_token).",
            route_labels, buckets=TPOT_BUCKETS, registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time spent waiting on the upstream (connect, headers and every chunk).",
            route_labels, buckets=LATENCY_BUCKETS, registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself: duration minus upstream wait, queueing and model loads.",
            ("route",), buckets=OVERHEAD_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens from the upstream's usage (gen_ai.client.token.usage); type=input|output.",
            ("task", "model", "type"), registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Requests being proxied now.", registry=r, multiprocess_mode="livesum",
        )
        self.routing = Counter(
            "gateway_routing_decisions", "Routing decisions by task, chosen model and reason (auto|pinned).",
            ("task", "model", "reason"), registry=r,
        )
        self.fallbacks = Counter(
            "gateway_fallbacks", "Requests moved to the next candidate; model is the one that failed.",
            ("task", "model", "cause"), registry=r,
        )
        self.rejections = Counter(
            "gateway_rejections", "Requests refused before the upstream (queue full, auth, bad input, …).",
            ("reason",), registry=r,
        )
        self.upstream_up = Gauge(
            "gateway_upstream_up", "1 when the upstream answered its last health check.",
            registry=r, multiprocess_mode="max",
        )
        self.upstream_restarts = Counter(
            "gateway_upstream_restarts", "Restarts of the managed Foundry Local runtime.", registry=r,
        )
        self.upstream_restart_failures = Counter(
            "gateway_upstream_restart_failures", "Restarts of the managed runtime that failed (the supervisor "
            "retries with backoff).", registry=r,
        )
        self.models_loaded = Gauge(
            "gateway_models_loaded", "Models loaded in the upstream.", registry=r, multiprocess_mode="max",
        )
        self.model_loaded = Gauge(
            "gateway_model_loaded", "1 when this registry model is loaded in the upstream.",
            ("model",), registry=r, multiprocess_mode="max",
        )
        self.key_requests = Counter(
            "gateway_key_requests", "Requests per team key (names from GATEWAY_KEYS_FILE).", ("key",), registry=r,
        )
        self.key_tokens = Counter(
            "gateway_key_tokens", "Tokens per team key, from the usage that came back; type=input|output.",
            ("key", "type"), registry=r,
        )
        self.key_rejections = Counter(
            "gateway_key_rejections", "Requests refused per team key, by reason (the quota it is over, "
            "model_not_allowed, task_not_allowed).", ("key", "reason"), registry=r,
        )
        self.keys_reloads = Counter(
            "gateway_keys_reloads", "Keys file (re)loads by result (ok|error).", ("result",), registry=r,
        )
        self.quota_store_errors = Counter(
            "gateway_quota_store_errors", "Quota store (Redis) calls that failed.", registry=r,
        )
        self.node_up = Gauge(
            "gateway_node_up", "Front mode: 1 while a node is admitted, 0 while ejected.", ("node",), registry=r,
            multiprocess_mode="max",
        )
        self.node_requests = Counter(
            "gateway_node_requests", "Front mode: attempts forwarded to each node, by outcome (ok|failed).",
            ("node", "outcome"), registry=r,
        )
        self.model_measured_ram = Gauge(
            "gateway_model_measured_ram_bytes", "RAM the runtime grew by when this model loaded (measured; "
            "fit and eviction use max(min_ram_gb, this)).", ("model",), registry=r, multiprocess_mode="max",
        )
        self.model_load_duration = Histogram(
            "gateway_model_load_duration_seconds", "Time to load a model into the upstream.",
            ("model", "result"), buckets=LOAD_BUCKETS, registry=r,
        )
        self.concurrency_limit = Gauge(
            "gateway_model_concurrency_limit", "Requests this model may have in flight now (adaptive or fixed; "
            "summed over workers).", ("model",), registry=r, multiprocess_mode="livesum",
        )
        self.breaker_open = Gauge(
            "gateway_model_cooling_down", "1 while a model is skipped after repeated failures.",
            ("model",), registry=r, multiprocess_mode="max",
        )
        self.host_ram = Gauge(
            "gateway_host_ram_bytes", "Host RAM the gateway sees (cgroup-capped or overridden).",
            registry=r, multiprocess_mode="max",
        )
        self.ram_budget = Gauge(
            "gateway_ram_budget_bytes", "RAM models may use: host RAM minus the reserve.",
            registry=r, multiprocess_mode="max",
        )
        self.registry_reloads = Counter(
            "gateway_registry_reloads", "Registry (re)loads by result (ok|error).", ("result",), registry=r,
        )
        self.registry_models = Gauge(
            "gateway_registry_models", "Models in the registry in force.", registry=r, multiprocess_mode="max",
        )
        self.cache_requests = Counter(
            "gateway_cache_requests", "Requests the response cache saw, by result: hit (answered from the cache), "
            "coalesced (joined an identical request's generation), miss (generated, then kept), bypass (not "
            "eligible, or Cache-Control said so).", ("result",), registry=r,
        )
        self.cache_results = {result: self.cache_requests.labels(result) for result in CACHE_RESULTS}  # bound once
        self.cache_tokens_saved = Counter(
            "gateway_cache_tokens_saved", "Tokens not generated again: the usage of answers served from the cache or "
            "shared by coalescing.", registry=r,
        )
        self.cache_bytes = Gauge(
            "gateway_cache_bytes", "Bytes of answers the cache holds in this process.", registry=r,
            multiprocess_mode="livesum",
        )
        self.state_free_bytes = Gauge(
            "gateway_state_free_bytes", "Free bytes on the disk of GATEWAY_STATE_DIR (state, files).", registry=r,
            multiprocess_mode="min",
        )
        self.state_full = Gauge(
            "gateway_state_full", "1 while the state store has no room (free space under "
            "GATEWAY_STATE_MIN_FREE_BYTES, or a write just ran out of it): uploads, stored responses and batches "
            "are refused with 507.", registry=r, multiprocess_mode="max",
        )
        self.usage_dropped = Counter(
            "gateway_usage_dropped", "Requests whose usage was not recorded: the state store was down for so long that "
            "the usage held for it reached its bound.", registry=r,
        )
        self.usage_flush_errors = Counter(
            "gateway_usage_flush_errors", "Usage flushes the state store refused (the usage is kept for the next).",
            registry=r,
        )
        self._models: frozenset[str] = frozenset()
        self._tasks: frozenset[str] = frozenset()
        self._children: dict[tuple[str, str, str], RequestSeries] = {}

    # --- bounded labels --------------------------------------------------------------------------

    def key_names(self, names: Iterable[str]) -> None:
        """The key names in force: a bounded label set (they come from the keys file, never from requests)."""
        for name in names:
            self.key_requests.labels(name)

    def set_vocabulary(self, models: Iterable[str], tasks: Iterable[str]) -> None:
        """The label values allowed for ``model`` and ``task`` (the registry in force)."""
        self._models = frozenset(models)
        self._tasks = frozenset(tasks)

    def model_label(self, model: str | None) -> str:
        return model if model in self._models else OTHER

    def task_label(self, task: str | None) -> str:
        return task if task in self._tasks else OTHER

    @staticmethod
    def rejection_label(code: str | None) -> str:
        return code if code in REJECTION_REASONS else OTHER

    def series(self, route: str, task: str | None, model: str | None) -> RequestSeries:
        """Cached label children for one (route, task, model)."""
        key = (route, task or OTHER, model or OTHER)
        child = self._children.get(key)
        if child is None:
            labels = (route, self.task_label(task), self.model_label(model))
            child = RequestSeries(self, labels)
            self._children[key] = child
        return child

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition: OpenMetrics (which carries the trace ids of exemplars) when the scraper asks for it,
        as Prometheus does with exemplar storage on; else the classic text format."""
        registry = self.registry
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if "application/openmetrics-text" in accept:
            return openmetrics.generate_latest(registry), openmetrics.CONTENT_TYPE_LATEST  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST


class RequestSeries:
    """The label children of one (route, task, model), resolved once."""

    __slots__ = ("duration", "input_tokens", "output_tokens", "overhead", "status", "tpot", "ttft", "upstream")

    def __init__(self, m: Metrics, labels: tuple[str, str, str]) -> None:
        route, task, model = labels
        self.status = {cls: m.requests.labels(route, task, model, cls) for cls in STATUS_CLASSES}
        self.duration = m.duration.labels(route, task, model)
        self.ttft = m.ttft.labels(route, task, model)
        self.tpot = m.tpot.labels(route, task, model)
        self.upstream = m.upstream_duration.labels(route, task, model)
        self.input_tokens = m.tokens.labels(task, model, "input")
        self.output_tokens = m.tokens.labels(task, model, "output")
        self.overhead = m.overhead.labels(route)


def status_class(status: int, aborted: bool = False) -> str:
    """The ``status_class`` label; a request that ended without any response counts as 5xx."""
    if aborted:
        return "aborted"
    if 0 < status < 400:
        return "2xx"
    if status == 0:
        return "5xx"
    if status < 500:
        return "4xx"
    return "5xx"
