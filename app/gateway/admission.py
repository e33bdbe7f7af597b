"""How many requests run at once: the gateway-wide limit and each model's — fixed (``GATEWAY_MODEL_CONCURRENCY``
or a registry ``max_concurrency``) or found by the adaptive controller (``app.policy.concurrency``) from the
throughput each limit gave. With N workers each enforces 1/N of every limit, so together they never exceed it
(``foundry-gateway serve`` refuses worker counts that cannot split the limits)."""

from __future__ import annotations

import logging
import time

from app.core.metrics import Metrics
from app.core.registry import ModelEntry, Registry
from app.core.settings import Settings
from app.policy.concurrency import AdaptiveLimit
from app.policy.limiter import Limiter

log = logging.getLogger("foundry_gateway")


class Admission:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.overall = Limiter("the gateway", self.per_worker(settings.max_in_flight),
                               self.per_worker(settings.queue_size), settings.queue_timeout,
                               aging=settings.batch_aging)
        self._limiters: dict[str, Limiter] = {}
        self._controllers: dict[str, AdaptiveLimit] = {}

    def limiter(self, entry: ModelEntry) -> Limiter:
        limiter = self._limiters.get(entry.name)
        if limiter is None:
            limiter = Limiter(f"model '{entry.name}'", self._model_limit(entry),
                              self.per_worker(self.settings.queue_size), self.settings.queue_timeout,
                              aging=self.settings.batch_aging)
            self._limiters[entry.name] = limiter
            self.metrics.concurrency_limit.labels(entry.name).set(limiter.limit)
        return limiter

    @property
    def limiters(self) -> dict[str, Limiter]:
        """Per-model limiters created so far (for status pages)."""
        return dict(self._limiters)

    def controller(self, entry: ModelEntry) -> AdaptiveLimit | None:
        """The model's adaptive limit, or None when its limit is fixed."""
        return self._controllers.get(entry.name)

    def completed(self, entry: ModelEntry, limiter: Limiter, service: float, units: float, admitted_at: int) -> None:
        """A request on ``entry`` held a slot for ``service`` seconds and produced ``units`` of work (tokens):
        feeds the queue's expected wait and the model's adaptive limit."""
        limiter.observe(service)
        controller = self._controllers.get(entry.name)
        if controller is not None and controller.completed(
                time.perf_counter(), service, units, admitted_at, waiting=limiter.queued > 0):
            limiter.set_limit(controller.limit)
            self.metrics.concurrency_limit.labels(entry.name).set(controller.limit)
            log.info("model %s: concurrency limit %s", entry.name, controller.decisions[-1])

    def apply(self, registry: Registry) -> None:
        """A new registry: limits of the models that left go, the others follow their entries."""
        for name in [n for n in self._limiters if registry.lookup(n) is None]:
            del self._limiters[name]
        for name in [n for n in self._controllers if registry.lookup(n) is None]:
            del self._controllers[name]
        for entry in registry:
            if limiter := self._limiters.get(entry.name):
                limiter.set_limit(self._model_limit(entry))
                self.metrics.concurrency_limit.labels(entry.name).set(limiter.limit)

    def per_worker(self, limit: int) -> int:
        """This worker's share of a limit."""
        return max(1, limit // self.settings.workers)

    def _model_limit(self, entry: ModelEntry) -> int:
        """A registry max_concurrency fixes the limit; otherwise the adaptive controller's, or the setting."""
        settings = self.settings
        if entry.max_concurrency or not settings.adaptive_concurrency:
            self._controllers.pop(entry.name, None)
            return self.per_worker(entry.max_concurrency or settings.model_concurrency)
        controller = self._controllers.get(entry.name)
        if controller is None:
            low = self.per_worker(settings.concurrency_min)
            high = max(low, self.per_worker(settings.concurrency_max))
            controller = self._controllers[entry.name] = AdaptiveLimit(
                minimum=low, maximum=high, initial=min(high, max(low, self.per_worker(settings.concurrency_initial))))
        return controller.limit
