"""The gateway's long-lived state, wired together: one ``Gateway`` per process. Each part has one job and its own
module — the registry in force (:class:`LiveRegistry`), which model a request gets (:class:`Router`), how many run
at once (:class:`Admission`), the runtime behind a node (:class:`Runtime`), stored responses (``Conversations``) —
beside the upstream, the breaker, keys and quotas, the state store, a front's fleet and the recent traffic. The HTTP
layers (``app.proxy``, ``app.server``) read from these parts; nothing here knows about HTTP requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from app.access.control import Access
from app.access.usage import UsageBook
from app.core import tracing
from app.core.hardware import GIB, host_memory
from app.core.metrics import Metrics
from app.core.recent import Recent
from app.core.registry import Registry
from app.core.settings import Settings
from app.gateway.admission import Admission
from app.gateway.cache import ResponseCache
from app.gateway.conversations import Conversations
from app.gateway.live_registry import LiveRegistry
from app.gateway.router import Router
from app.gateway.runtime import Runtime
from app.policy.breaker import Breaker
from app.policy.residency import Residency
from app.state import StoreDown, open_store
from app.state.disk import DiskSpace
from app.upstream.client import Upstream
from app.upstream.fleet import Fleet
from app.upstream.footprint import FILE_NAME as FOOTPRINTS
from app.upstream.footprint import Footprints, LoadMeter
from app.upstream.inventory import Inventory

log = logging.getLogger("foundry_gateway")

__all__ = ["Admission", "Gateway", "LiveRegistry", "Router", "Runtime"]


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics = metrics or Metrics()
        self.memory = host_memory(settings.host_ram_gb, settings.ram_reserve_gb)
        self.live = LiveRegistry(settings.registry_path, metrics)  # a bad registry at start is fatal
        self.upstream = Upstream(settings)
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown,
                               on_change=lambda model, is_open: metrics.breaker_open.labels(model).set(int(is_open)))
        self.fleet = Fleet(settings, on_change=lambda node, up: metrics.node_up.labels(node).set(int(up))) \
            if settings.nodes else None  # front mode: nodes, not a runtime, behind this gateway
        measured = settings.foundry_cache_dir / FOOTPRINTS if self.upstream.profile.manages_models else None
        footprints = Footprints(measured)
        self.inventory = Inventory(self.upstream, metrics, budget_gb=lambda: self.memory.budget_gb,
                                   load_timeout=settings.load_timeout, idle_unload_after=settings.idle_unload_after,
                                   footprints=footprints, meter=LoadMeter(lambda: self.runtime.private_bytes()))
        self.runtime = Runtime(settings, metrics, self.memory, self.upstream, self.inventory, self.breaker)
        self.router = Router(settings, self.memory, self.inventory, self.breaker, self.fleet)
        self.admission = Admission(settings, metrics)
        self.residency = Residency(self.router.fit_together, hold=settings.swap_hold)
        self.state = open_store(settings)  # what must outlive a request: quotas, stored responses (SQLite or Redis)
        self.disk = DiskSpace(settings.state_dir, settings.state_min_free_bytes, on_reading=self._disk_reading)
        # who used what (GET /v1/usage); a front's own space: its nodes' books never add into its totals
        self.usage = UsageBook(self.state, metrics, space="usage-front" if self.fleet is not None else "usage",
                               retention_days=settings.usage_retention_days) if settings.usage else None
        self.access = Access(settings, metrics, self.state, self.usage)  # team keys, quotas, budgets
        self.conversations = Conversations(self.state, settings, self.disk)  # stored responses (the Responses API)
        self.cache = ResponseCache(settings, metrics, self.state)  # answers kept for requests that come again
        self.recent = Recent()  # the last minutes, for the console
        # one trace per request, None unless OTEL_EXPORTER_OTLP_ENDPOINT is set (and nothing of OpenTelemetry loaded)
        self.tracer = tracing.configure("foundry_gateway" if self.fleet else self.upstream.profile.system)
        self.draining = False
        self._tasks: list[asyncio.Task[Any]] = []
        for apply in (self._registry_changed, self.inventory.set_registry, self.router.apply, self.admission.apply,
                      self.runtime.apply, self.cache.apply):
            self.live.subscribe(apply)
        metrics.host_ram.set(self.memory.total_gb * GIB)
        metrics.ram_budget.set(self.memory.budget_gb * GIB)

    @property
    def registry(self) -> Registry:
        return self.live.registry

    def _disk_reading(self, free: int, full: bool) -> None:
        self.metrics.state_free_bytes.set(free)
        self.metrics.state_full.set(int(full))

    def _registry_changed(self, registry: Registry) -> None:
        self.metrics.set_vocabulary((e.name for e in registry), registry.tasks)
        self.metrics.registry_models.set(len(registry))

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        for warning in exposure_warnings(self.settings):
            log.warning("%s", warning)
        self.disk.free()  # the gauges from the start
        self.spawn(self._heartbeat())
        if self.usage is not None:
            self.spawn(self.usage.run())
        if self.settings.registry_watch_interval > 0:  # the registry and the keys file
            self.spawn(self.live.watch(self.settings.registry_watch_interval, also=self.access.reload_if_changed))
        if self.fleet is not None:  # a front: its nodes run the runtimes
            await self.fleet.poll_all()
            self.spawn(self.fleet.run())
            healthy = [n.name for n in self.fleet.nodes.values() if n.healthy]
            log.info("front of %d nodes (%s healthy)", len(self.fleet.nodes), ", ".join(healthy) or "none")
            return
        await self.runtime.start(self.spawn)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            hangup = getattr(signal, "SIGHUP", None)  # not on Windows: reload with POST /admin/reload there
            if hangup is not None:
                asyncio.get_running_loop().add_signal_handler(hangup, self.live.reload, "SIGHUP")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        await self.upstream.aclose()
        if self.fleet is not None:
            await self.fleet.aclose()
        await self.state.aclose()
        await self.runtime.stop()

    async def _heartbeat(self) -> None:
        """Renew this process's lease on its quota slots, so a process that dies frees them within a lease."""
        while True:
            try:
                await self.state.heartbeat()
            except StoreDown as exc:
                log.debug("state store heartbeat: %s", exc)
            await asyncio.sleep(self.state.lease / 3)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A background task of the gateway's, cancelled at stop."""
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        return task

    @property
    def healthy(self) -> bool:
        """Liveness: false only if the managed runtime's supervisor died (it should never)."""
        return self.runtime.healthy or self.draining

    @property
    def ready(self) -> bool:
        if self.draining or not len(self.registry):
            return False
        if self.fleet is not None:
            return any(n.healthy for n in self.fleet.nodes.values())
        return self.runtime.ready


_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def exposure_warnings(settings: Settings) -> list[str]:
    """Loud start-up warnings for a gateway reachable beyond this machine without keys."""
    if settings.host.startswith(_LOOPBACK):
        return []
    warnings = []
    if not settings.all_api_keys and settings.keys_file is None:
        warnings.append(f"!!! listening on {settings.host}:{settings.port} with NO API KEYS: anyone who can reach this "
                        "address can use your models. Set GATEWAY_KEYS_FILE (team keys) or GATEWAY_API_KEYS.")
    if not settings.metrics_api_key:
        warnings.append(f"/metrics is open on {settings.host}:{settings.port}: set GATEWAY_METRICS_API_KEY to "
                        "protect it.")
    return warnings
