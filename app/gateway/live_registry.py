"""The registry in force (``models.json``): loaded at start — a bad one is fatal there — and swapped atomically on
reload, so requests in flight keep the entries they started with. A reload that fails is rejected with its
reasons and the last good registry stays; the file is watched (``GATEWAY_REGISTRY_WATCH_INTERVAL``), reloaded on
SIGHUP and on ``POST /admin/reload``. Whoever depends on the registry subscribes and is told of every new one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from app.core.files import file_mtime
from app.core.metrics import Metrics
from app.core.registry import Registry, RegistryError, load_registry

log = logging.getLogger("foundry_gateway")


class LiveRegistry:
    def __init__(self, path: Path, metrics: Metrics) -> None:
        self.path = path
        self.metrics = metrics
        self.registry: Registry = load_registry(path)
        self.rejected: str | None = None  # why the last reload was refused (None: the file in force is the latest)
        self._mtime = file_mtime(path)
        self._subscribers: list[Callable[[Registry], None]] = []
        metrics.registry_reloads.labels("ok").inc()

    def subscribe(self, apply: Callable[[Registry], None]) -> None:
        """Call ``apply`` with the registry now and with every new one."""
        self._subscribers.append(apply)
        apply(self.registry)

    def reload(self, reason: str = "request") -> tuple[bool, str]:
        """Load the file again; a bad file is rejected and the last good registry stays."""
        self._mtime = file_mtime(self.path)
        try:
            registry = load_registry(self.path)
        except RegistryError as exc:
            self.metrics.registry_reloads.labels("error").inc()
            self.rejected = "; ".join(exc.problems)
            log.error("registry reload (%s) rejected, keeping the last good one: %s", reason, self.rejected)
            return False, self.rejected
        self.registry, self.rejected = registry, None
        for apply in self._subscribers:
            apply(registry)
        self.metrics.registry_reloads.labels("ok").inc()
        log.info("registry reloaded (%s): %d models", reason, len(registry))
        return True, f"{len(registry)} models"

    async def watch(self, interval: float, also: Callable[[], None] | None = None) -> None:
        """Reload when the file changes; ``also`` is checked on the same beat (the keys file)."""
        while True:
            await asyncio.sleep(interval)
            try:
                if file_mtime(self.path) != self._mtime:
                    self.reload("file changed")
                if also is not None:
                    also()
            except Exception:  # a bug in one reload must not stop every later one
                log.exception("watching the registry and keys files failed; watching on")
