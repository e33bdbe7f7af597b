"""The gateway's long-lived state and its background work.

One ``Gateway`` per process holds the registry in force (swapped atomically on reload: requests in
flight keep the entries they started with), the host's RAM budget, the upstream client and
inventory, admission limits, the circuit breaker and metrics. The HTTP layers (``proxy``, ``api``)
only read from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from app.breaker import Breaker
from app.errors import GatewayError
from app.hardware import GIB, HostMemory, host_memory
from app.limiter import Limiter
from app.metrics import Metrics
from app.registry import ModelEntry, Registry, RegistryError, load_registry
from app.routing import Route, choose
from app.settings import Settings
from app.upstream.client import Upstream
from app.upstream.inventory import Inventory
from app.upstream.managed import LocalModelSpec, ManagedFoundry

log = logging.getLogger("foundry_gateway")


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.memory: HostMemory = host_memory(settings.host_ram_gb, settings.ram_reserve_gb)
        self.registry: Registry = load_registry(settings.registry_path)  # a bad registry at start is fatal
        self._registry_mtime = _mtime(settings.registry_path)
        self.metrics.registry_reloads.labels("ok").inc()
        external = settings.upstream_mode == "external"
        self.upstream = Upstream(settings, base_url=self._external_url() if external else None)
        self.inventory = Inventory(
            self.upstream, self.metrics, budget_gb=lambda: self.memory.budget_gb,
            load_timeout=settings.load_timeout, idle_unload_after=settings.idle_unload_after,
        )
        self.breaker = Breaker(
            settings.breaker_failures, settings.breaker_cooldown,
            on_change=lambda model, is_open: self.metrics.breaker_open.labels(model).set(int(is_open)),
        )
        self.admission = Limiter("the gateway", settings.max_in_flight, settings.queue_size, settings.queue_timeout)
        self._limiters: dict[str, Limiter] = {}
        self._routes: dict[tuple[object, ...], Route] = {}
        self._api_keys = tuple(k.encode() for k in settings.all_api_keys)
        self.managed: ManagedFoundry | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.draining = False
        self._apply_registry(self.registry)
        self.metrics.host_ram.set(self.memory.total_gb * GIB)
        self.metrics.ram_budget.set(self.memory.budget_gb * GIB)

    # --- routing and admission --------------------------------------------------------------------

    def route(self, model: str | None, task: str | None) -> Route:
        """The routing policy's answer, memoised: it only changes with the registry, the upstream's
        inventory or the breaker, and all three are part of the key (or clear the cache)."""
        available, cooling = self.inventory.available, self.breaker.cooling()
        key = (model, task, available, cooling)
        route = self._routes.get(key)
        if route is None:
            route = choose(
                self.registry, model=model, task=task, default_task=self.settings.default_task,
                budget_gb=self.memory.budget_gb, available=available, cooling=cooling,
            )
            if len(self._routes) >= 1024:  # clients choose the strings in the key: stay bounded
                self._routes.clear()
            self._routes[key] = route
        return route

    def limiter(self, entry: ModelEntry) -> Limiter:
        limiter = self._limiters.get(entry.name)
        if limiter is None:
            limit = entry.max_concurrency or self.settings.model_concurrency
            limiter = Limiter(f"model '{entry.name}'", limit, self.settings.queue_size, self.settings.queue_timeout)
            self._limiters[entry.name] = limiter
        return limiter

    def check_key(self, authorization: str | None, required: tuple[bytes, ...] | None = None) -> None:
        """Constant-time API key check (401 in OpenAI's format)."""
        keys = self._api_keys if required is None else required
        if not keys:
            return
        token = b""
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip().encode()
        ok = False
        for key in keys:  # compare with every key: timing does not tell which one matched
            ok |= hmac.compare_digest(token, key)
        if not ok:
            raise GatewayError(
                401, "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
                code="invalid_api_key", headers={"www-authenticate": "Bearer"},
            )

    # --- registry ----------------------------------------------------------------------------------

    def _apply_registry(self, registry: Registry) -> None:
        self.registry = registry
        self._routes = {}
        self.inventory.set_registry(registry)
        self.metrics.set_vocabulary((e.name for e in registry), registry.tasks)
        self.metrics.registry_models.set(len(registry))
        for name in list(self._limiters):
            if registry.lookup(name) is None:
                del self._limiters[name]
        for entry in registry:  # a changed max_concurrency applies to new limiters only
            if name_limiter := self._limiters.get(entry.name):
                name_limiter.limit = entry.max_concurrency or self.settings.model_concurrency

    def reload_registry(self, reason: str = "request") -> tuple[bool, str]:
        """Load the registry file again; a bad file is rejected and the last good one stays."""
        path = self.settings.registry_path
        self._registry_mtime = _mtime(path)
        try:
            registry = load_registry(path)
        except RegistryError as exc:
            self.metrics.registry_reloads.labels("error").inc()
            log.error("registry reload (%s) rejected, keeping the last good one: %s", reason, exc)
            return False, str(exc)
        self._apply_registry(registry)
        self.metrics.registry_reloads.labels("ok").inc()
        log.info("registry reloaded (%s): %d models", reason, len(registry))
        if self.managed is not None and self.managed.models != self.local_models():
            log.warning("the reloaded registry changes local model folders: they are registered with Foundry "
                        "Local when the managed runtime next starts (restart the gateway to apply now)")
        return True, f"{len(registry)} models"

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.upstream_mode == "managed":
            await self._start_managed()
        await self.inventory.refresh()
        if not self.inventory.up:
            log.warning("upstream %s not reachable yet: %s", self.upstream.base_url, self.inventory.last_error)
        self._spawn(self._refresh_loop())
        if self.settings.registry_watch_interval > 0:
            self._spawn(self._watch_registry())
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_registry, "SIGHUP")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        await self.upstream.aclose()
        if self.managed is not None:
            await self.managed.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.inventory_refresh_interval if self.inventory.up else 1.0)
            await self.inventory.refresh()
            await self.inventory.unload_idle()
            self.upstream.transport.prune_idle()

    async def _watch_registry(self) -> None:
        path = self.settings.registry_path
        while True:
            await asyncio.sleep(self.settings.registry_watch_interval)
            if _mtime(path) != self._registry_mtime:
                self.reload_registry("file changed")

    # --- managed Foundry Local -----------------------------------------------------------------------

    def local_models(self) -> list[LocalModelSpec]:
        return [
            LocalModelSpec(model_id=e.upstream_id or f"{e.name}-generic-cpu:1", path=str(e.path), task=_foundry_task(e))
            for e in self.registry if e.path is not None
        ]

    async def _start_managed(self) -> None:
        self.managed = ManagedFoundry(
            cache_dir=self.settings.foundry_cache_dir.resolve(), models=self.local_models(),
            start_timeout=self.settings.foundry_start_timeout, log=log,
        )
        url = await self.managed.start()
        self.upstream.set_base_url(url)
        self.managed.on_restart.append(self._on_upstream_restart)
        self._spawn(self.managed.run_supervisor())

    def _on_upstream_restart(self, url: str) -> None:
        log.warning("managed Foundry Local restarted at %s", url)
        self.metrics.upstream_restarts.inc()
        self.upstream.set_base_url(url)
        self.inventory.loaded.clear()
        self._spawn(self.inventory.refresh())

    def _external_url(self) -> str | None:
        return self.settings.upstream_url or discover_foundry_url()


def _foundry_task(entry: ModelEntry) -> str:
    return "coding" if entry.tasks == ("code",) else "chat-completion"


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return 0.0


def discover_foundry_url() -> str | None:
    """Ask the ``foundry`` CLI where the service runs (its port can change between restarts)."""
    exe = shutil.which("foundry")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "service", "status"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.split():
        if word.startswith("http://") or word.startswith("https://"):
            return word.rstrip("/.").removesuffix("/openai/status")
    return None
