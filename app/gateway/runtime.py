"""The runtime behind a node: Foundry Local started and supervised in a child process (managed mode) or a
service found at ``GATEWAY_UPSTREAM_URL`` or by asking the ``foundry`` CLI (external mode); what it has (the
inventory, refreshed in the background, idle models unloaded), and ``GATEWAY_PRELOAD`` before turning ready.

The request path asks it one question: :meth:`Runtime.recovered` — after a connection failure, is a runtime back
(the same one, or the supervisor's replacement) before the request's deadline? How it is kept alive is
``app.upstream.managed``'s business.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from app.core.errors import GatewayError
from app.core.hardware import HostMemory
from app.core.metrics import Metrics
from app.core.registry import ModelEntry, Registry
from app.core.settings import Settings
from app.policy.breaker import Breaker
from app.upstream.client import Upstream
from app.upstream.discovery import discover_foundry_url
from app.upstream.footprint import private_bytes
from app.upstream.inventory import Inventory
from app.upstream.managed import LocalModelSpec, ManagedFoundry

log = logging.getLogger("foundry_gateway")
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]

_FOUNDRY_TASKS = {"code": "coding", "embeddings": "embeddings", "transcription": "automatic-speech-recognition",
                  "vision": "vision-language-chat"}


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics, memory: HostMemory, upstream: Upstream,
                 inventory: Inventory, breaker: Breaker) -> None:
        self.settings = settings
        self.metrics = metrics
        self.memory = memory
        self.upstream = upstream
        self.inventory = inventory
        self.breaker = breaker
        self.registry = Registry(())
        self.managed: ManagedFoundry | None = None
        self.supervisor: asyncio.Task[None] | None = None
        self.preload: dict[str, str] = {}  # GATEWAY_PRELOAD: model → "loaded" or why not
        self.preloading = False
        self._spawn: Spawn | None = None

    def apply(self, registry: Registry) -> None:
        self.registry = registry
        if self.managed is not None and self.managed.models != self.local_models():
            log.warning("the reloaded registry changes local model folders: they are registered with Foundry "
                        "Local when the managed runtime next starts (restart the gateway to apply now)")

    # --- start and stop ---------------------------------------------------------------------------------------

    async def start(self, spawn: Spawn) -> None:
        self._spawn = spawn
        if self.settings.upstream_mode == "managed":
            await self._start_managed()
        elif self.settings.upstream_url is None:
            await self.discover()
        await self.inventory.refresh()
        if not self.inventory.up:
            log.warning("upstream %s not reachable yet: %s", self.upstream.base_url, self.inventory.last_error)
        if self.settings.preload and self.upstream.manages_models:
            self.preloading = True
            spawn(self._preload())
        spawn(self._refresh_loop())

    async def discover(self) -> None:
        """External mode without ``GATEWAY_UPSTREAM_URL``: ask the ``foundry`` CLI where the service runs (its port
        can change between restarts), off the event loop."""
        url = await asyncio.to_thread(discover_foundry_url)
        if url is not None:
            self.upstream.set_base_url(url)

    async def stop(self) -> None:
        if self.managed is not None:
            await self.managed.stop()

    @property
    def healthy(self) -> bool:
        """False only if the managed runtime's supervisor died (it should never)."""
        return self.supervisor is None or not self.supervisor.done()

    @property
    def ready(self) -> bool:
        serving = self.managed is None or self.managed.serving
        return serving and self.inventory.up and not self.preloading

    # --- the request path's one question ---------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """False while a managed runtime is known to be down (external upstreams: always True)."""
        return self.managed is None or self.managed.serving

    @property
    def restarts(self) -> int:
        return self.managed.restarts if self.managed is not None else 0

    async def recovered(self, deadline: float) -> bool:
        """After a connection failure: wait (until ``deadline``, loop time) for a managed runtime to be back."""
        if self.managed is None:
            return False
        remaining = min(deadline - asyncio.get_running_loop().time(), self.settings.foundry_start_timeout)
        return remaining > 0 and await self.managed.recovered(remaining)

    def private_bytes(self) -> int | None:
        """The managed runtime's private memory now (None for an external one: not ours to read)."""
        pid = self.managed.pid if self.managed is not None else None
        return private_bytes(pid) if pid else None

    # --- managed Foundry Local --------------------------------------------------------------------------------

    def local_models(self) -> list[LocalModelSpec]:
        return [
            LocalModelSpec(model_id=e.upstream_id or f"{e.name}-generic-cpu:1", path=str(e.path), task=_foundry_task(e))
            for e in self.registry if e.path is not None
        ]

    async def _start_managed(self) -> None:
        prefix = shlex.split(self.settings.foundry_runner_prefix)
        runner = [*prefix, sys.executable, "-m", "app.upstream.foundry_runner"]
        self.managed = ManagedFoundry(
            cache_dir=self.settings.foundry_cache_dir.resolve(), models=self.local_models(),
            start_timeout=self.settings.foundry_start_timeout, runner=runner, log=log,
        )
        url = await self.managed.start()
        self.upstream.set_base_url(url)
        self.managed.on_down.append(self._on_down)
        self.managed.on_restart.append(self._on_restart)
        self.managed.on_restart_failed.append(lambda _: self.metrics.upstream_restart_failures.inc())
        assert self._spawn is not None
        self.supervisor = self._spawn(self.managed.run_supervisor())

    def _on_down(self, reason: str) -> None:
        log.warning("%s: requests wait for the restart", reason)
        self.inventory.mark_down(reason)

    def _on_restart(self, url: str) -> None:
        log.warning("managed Foundry Local restarted at %s", url)
        self.metrics.upstream_restarts.inc()
        self.upstream.set_base_url(url)
        self.breaker.reset()  # a new runtime: old failures say nothing about it
        if self._spawn is not None:
            self._spawn(self.inventory.restore_after_restart())

    # --- background work --------------------------------------------------------------------------------------

    def preload_list(self) -> list[ModelEntry | str]:
        """``GATEWAY_PRELOAD`` as registry entries (a name the registry does not know stays a string)."""
        if [name.lower() for name in self.settings.preload] == ["all-fitting"]:
            chosen: list[ModelEntry | str] = []
            room = self.memory.budget_gb
            for entry in self.registry:
                available = self.inventory.available is None or entry.name in self.inventory.available
                if available and self.inventory.ram_gb(entry) <= room:
                    chosen.append(entry)
                    room -= self.inventory.ram_gb(entry)
            return chosen
        return [self.registry.lookup(name) or name for name in self.settings.preload]

    async def _preload(self) -> None:
        """Load ``GATEWAY_PRELOAD`` before turning ready; a model that fails is reported, not fatal."""
        try:
            deadline = time.monotonic() + self.settings.foundry_start_timeout
            while not self.inventory.up and time.monotonic() < deadline:  # an upstream still starting: wait for it
                await asyncio.sleep(0.5)
                await self.inventory.refresh()
            for item in self.preload_list():
                if isinstance(item, str):
                    self.preload[item] = "not in the registry"
                    log.error("GATEWAY_PRELOAD: '%s' is not in the registry", item)
                    continue
                try:
                    self.inventory.touch(item)  # the models preloaded earlier are not the least recently used
                    await self.inventory.ensure_loaded(item)
                    self.preload[item.name] = "loaded"
                except GatewayError as err:
                    self.preload[item.name] = err.message
                    log.error("GATEWAY_PRELOAD: %s", err.message)
            for name, outcome in self.preload.items():
                entry = self.registry.lookup(name)
                if outcome == "loaded" and entry is not None and not self.inventory.is_loaded(entry):
                    self.preload[name] = "loaded, then unloaded to make room for the models after it"
                    log.error("GATEWAY_PRELOAD: %s did not stay loaded: the list does not fit together", name)
            log.info("preloaded: %s", ", ".join(f"{k} ({v})" for k, v in self.preload.items()) or "nothing")
        finally:
            self.preloading = False

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.inventory_refresh_interval if self.inventory.up else 1.0)
            # (a managed runtime that is down: the supervisor brings it back, then it is refreshed)
            serving = self.managed is None or self.managed.serving
            if serving and await self.inventory.refresh():
                self.breaker.reset_transport_failures()  # it answers: connection failures said nothing of models
            await self.inventory.unload_idle()
            self.upstream.prune_idle()


def _foundry_task(entry: ModelEntry) -> str:
    """The ``task`` metadata Foundry Local wants when registering a local folder."""
    return _FOUNDRY_TASKS.get(entry.tasks[0], "chat-completion") if len(entry.tasks) == 1 else "chat-completion"
