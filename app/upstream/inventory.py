"""What the upstream really has: which registry models it serves, under which id, and what is loaded.

Apps say ``tiny-chat``; Foundry Local wants ``tiny-chat-generic-cpu:1`` for inference and the alias
``tiny-chat`` for load/unload. The inventory maps registry names to upstream ids from the upstream's
own model list, loads models on demand (one load per model however many requests wait for it) and
unloads idle or least-recently-used ones — never ``pinned`` ones — to stay within the host's RAM budget,
counting each model at max(its ``min_ram_gb``, what it was measured to use: ``app.upstream.footprint``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from app.core.errors import GatewayError
from app.core.metrics import Metrics
from app.core.registry import ModelEntry, Registry, alias_of
from app.upstream.client import Upstream
from app.upstream.footprint import GIB, Footprints, LoadMeter

log = logging.getLogger("foundry_gateway.inventory")


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _version(upstream_id: str) -> int:
    _, _, version = upstream_id.rpartition(":")
    return int(version) if version.isdigit() else -1


class Inventory:
    def __init__(
        self,
        upstream: Upstream,
        metrics: Metrics,
        *,
        budget_gb: Callable[[], float],
        load_timeout: float,
        idle_unload_after: float = 0.0,
        footprints: Footprints | None = None,
        meter: LoadMeter | None = None,
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.budget_gb = budget_gb
        self.load_timeout = load_timeout
        self.idle_unload_after = idle_unload_after
        self.footprints = footprints or Footprints(None)
        self.meter = meter
        self.registry: Registry | None = None
        self.ids: list[str] = []
        self.loaded: set[str] = set()
        self.resolved: dict[str, str] = {}
        self.available: frozenset[str] | None = None  # registry names the upstream has; None = unknown
        self.up = False
        self.last_error = ""
        self.last_refresh = 0.0
        self._last_used: dict[str, float] = {}
        self._in_use: dict[str, int] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._unloading: dict[str, asyncio.Future[None]] = {}
        self._load_waiters: dict[str, int] = {}  # requests waiting for a model's load
        self._restore: set[str] = set()  # upstream ids loaded when the runtime died: loaded again on restart
        self._tasks: set[asyncio.Future[None]] = set()

    # --- names -----------------------------------------------------------------------------------

    def set_registry(self, registry: Registry) -> None:
        self.registry = registry
        self._resolve()

    def upstream_id(self, entry: ModelEntry) -> str:
        """The id the upstream wants for inference."""
        return self.resolved.get(entry.name) or entry.upstream_id or entry.name

    def alias(self, entry: ModelEntry) -> str:
        return alias_of(self.upstream_id(entry))

    def measured_gb(self, entry: ModelEntry) -> float | None:
        """What loading this model grew the runtime by, when measured (here or before a restart)."""
        return self.footprints.gb(self.upstream_id(entry))

    def _quiet(self, loading: ModelEntry) -> bool:
        """No other model is generating: the runtime's memory moves only with this load."""
        return not any(count for name, count in self._in_use.items() if name != loading.name)

    def touch(self, entry: ModelEntry) -> None:
        """Used now (a preload): the least recently used is someone else."""
        self._last_used[entry.name] = time.monotonic()

    def ram_gb(self, entry: ModelEntry) -> float:
        """The RAM this model is taken to need: max(the registry's ``min_ram_gb``, measured)."""
        return max(entry.min_ram_gb, self.measured_gb(entry) or 0.0)

    def is_loaded(self, entry: ModelEntry) -> bool:
        return not self.upstream.manages_models or self.upstream_id(entry) in self.loaded

    def _resolve(self) -> None:
        if self.registry is None:
            return
        exact = {i.lower(): i for i in self.ids}
        by_alias: dict[str, str] = {}
        for upstream_id in sorted(self.ids, key=_version):  # highest version wins
            by_alias[alias_of(upstream_id)] = upstream_id
        resolved: dict[str, str] = {}
        for entry in self.registry:
            match = exact.get(entry.upstream_id.lower()) if entry.upstream_id else None
            for name in (entry.name, *entry.aliases):
                if match:
                    break
                match = exact.get(name.lower()) or by_alias.get(name.lower())
            if match:
                resolved[entry.name] = match
        self.resolved = resolved
        self.available = frozenset(resolved) if self.last_refresh else None
        self._export()

    def _export(self) -> None:
        self.metrics.upstream_up.set(1 if self.up else 0)
        self.metrics.models_loaded.set(len(self.loaded))
        if self.registry is not None:
            for entry in self.registry:
                self.metrics.model_loaded.labels(entry.name).set(1 if self.is_loaded(entry) else 0)
                measured = self.footprints.bytes.get(self.upstream_id(entry))
                if measured is not None:
                    self.metrics.model_measured_ram.labels(entry.name).set(measured)

    # --- refresh ---------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Ask the upstream what it has; returns whether it answered."""
        try:
            ids = await self.upstream.model_ids()
            loaded = await self.upstream.loaded_ids()
        except (httpx.HTTPError, ValueError, OSError) as exc:
            self.up = False
            self.last_error = str(exc) or exc.__class__.__name__
            self._export()
            return False
        self.ids, self.loaded, self.up, self.last_error = ids, set(loaded), True, ""
        self.last_refresh = time.time()
        self._resolve()
        return True

    def mark_missing(self, entry: ModelEntry) -> None:
        """The upstream said 404 for this model: forget it until the next refresh says otherwise."""
        upstream_id = self.upstream_id(entry)
        self.loaded.discard(upstream_id)
        if self.available is not None:
            self.available = self.available - {entry.name}

    def mark_unloaded(self, entry: ModelEntry) -> None:
        self.loaded.discard(self.upstream_id(entry))
        self._export()

    def mark_down(self, reason: str) -> None:
        """The runtime died: nothing is loaded any more; remember what was, to load it again."""
        self._restore |= self.loaded
        self.loaded = set()
        self.up = False
        self.last_error = reason
        self._export()

    async def restore_after_restart(self) -> None:
        """A new runtime is up: learn what it has, then load again what the old one had loaded."""
        if not await self.refresh() or self.registry is None:
            return
        wanted, self._restore = self._restore, set()
        for entry in self.registry:
            if self.upstream_id(entry) in wanted and not self.is_loaded(entry):
                try:
                    await self.ensure_loaded(entry)
                except GatewayError as exc:
                    log.warning("reloading %s after the restart failed: %s", entry.name, exc.message)

    # --- use tracking (for idle unload and LRU) ---------------------------------------------------

    def acquire(self, entry: ModelEntry) -> None:
        self._in_use[entry.name] = self._in_use.get(entry.name, 0) + 1
        self._last_used[entry.name] = time.monotonic()

    def release(self, entry: ModelEntry) -> None:
        self._in_use[entry.name] = self._in_use.get(entry.name, 1) - 1
        self._last_used[entry.name] = time.monotonic()

    # --- loading ------------------------------------------------------------------------------------

    async def ensure_loaded(self, entry: ModelEntry) -> float:
        """Load ``entry`` if the upstream has not; returns seconds spent waiting for a load."""
        if self.is_loaded(entry):
            return 0.0
        started = time.perf_counter()
        pending = self._loading.get(entry.name)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            pending.add_done_callback(_retrieve)  # no "exception never retrieved" if every waiter left
            self._loading[entry.name] = pending
            self._tasks.add(task := asyncio.ensure_future(self._load(entry, pending)))
            task.add_done_callback(self._tasks.discard)
        self._load_waiters[entry.name] = self._load_waiters.get(entry.name, 0) + 1
        try:
            await asyncio.shield(pending)
        finally:
            self._load_waiters[entry.name] -= 1
        return time.perf_counter() - started

    async def _load(self, entry: ModelEntry, done: asyncio.Future[None]) -> None:
        started = time.perf_counter()
        result = "error"
        try:
            unloading = self._unloading.get(entry.name)
            if unloading is not None:  # being unloaded to make room: load it again once that is done
                await asyncio.shield(unloading)
            await self._make_room_for(entry)
            token = await self.meter.begin(self._quiet(entry)) if self.meter is not None else None
            loaded = False
            try:
                status = await self.upstream.load(self.alias(entry), self.load_timeout)
                loaded = True
            finally:
                grown = None
                if self.meter is not None and token is not None:
                    grown = await self.meter.end(token, ok=loaded, quiet=self._quiet(entry))
            if grown and status != "already_loaded":
                self.footprints.record(self.upstream_id(entry), grown)
                log.info("%s uses %.3f GiB (measured)", entry.name, grown / GIB)
            self.loaded.add(self.upstream_id(entry))
            result = "ok"
            log.info("loaded %s (%s) in %.2fs: %s", entry.name, self.upstream_id(entry),
                     time.perf_counter() - started, status)
            done.set_result(None)
            if not entry.pinned and not self._load_waiters.get(entry.name) and not self._in_use.get(entry.name):
                # every request that wanted it left while it loaded: give the RAM back at once
                await self._unload(entry, reason="loaded for requests that all left")
        except httpx.ConnectError as exc:
            done.set_exception(GatewayError(
                503, f"Loading model '{entry.name}' failed: {exc}", code="upstream_unavailable",
            ))
        except httpx.TimeoutException:
            done.set_exception(GatewayError(
                503, f"Loading model '{entry.name}' took longer than {self.load_timeout:g}s.",
                code="model_load_timeout",
            ))
        except (httpx.HTTPError, ValueError, OSError) as exc:
            done.set_exception(GatewayError(
                503, f"Loading model '{entry.name}' failed: {exc}", code="model_load_failed",
            ))
        finally:
            self._loading.pop(entry.name, None)
            self.metrics.model_load_duration.labels(entry.name, result).observe(time.perf_counter() - started)
            self._export()
            if not done.done():
                done.set_exception(GatewayError(503, f"Loading model '{entry.name}' was cancelled."))

    async def _make_room_for(self, entry: ModelEntry) -> None:
        """Unload least-recently-used idle models until ``entry`` fits the RAM budget.

        The victim is chosen afresh after every unload: the awaits give other requests time to start
        using a model, and a model in use is never unloaded.
        """
        while self.registry is not None:
            loaded = [e for e in self.registry if e.name != entry.name and self.is_loaded(e)]
            if sum(self.ram_gb(e) for e in loaded) + self.ram_gb(entry) <= self.budget_gb():
                return
            idle = [e for e in loaded
                    if not e.pinned and not self._in_use.get(e.name) and e.name not in self._unloading]
            if not idle:
                log.warning("loading %s goes over the RAM budget: every other loaded model is in use or pinned",
                            entry.name)
                return
            victim = min(idle, key=lambda e: self._last_used.get(e.name, 0.0))
            if not await self._unload(victim, reason=f"to make room for {entry.name}"):
                log.warning("loading %s goes over the RAM budget: %s would not unload", entry.name, victim.name)
                return

    async def _unload(self, entry: ModelEntry, reason: str) -> bool:
        """Unload ``entry``; it counts as unloaded from the start, so a request for it waits and reloads.

        Foundry Local refuses to unload a model with a generation still running ("cannot unload model …:
        1 active"), which happens right after a client left mid-stream: the runtime notices the closed
        connection a moment later. So a refusal is retried a few times over ~1.5 s; if the model still
        will not go, it counts as loaded again (the truth) and the caller stops making room with it."""
        done = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)
        self._unloading[entry.name] = done
        self.mark_unloaded(entry)
        if self.meter is not None:
            self.meter.changed()  # no load is measured across an unload
        try:
            for attempt, pause in enumerate((0.05, 0.1, 0.2, 0.4, 0.8, None)):
                try:
                    await self.upstream.unload(self.alias(entry), timeout=self.load_timeout)
                    log.info("unloaded %s (%s)", entry.name, reason)
                    return True
                except httpx.HTTPStatusError as exc:
                    if pause is None:
                        log.warning("unloading %s failed %d times, it stays loaded: %s", entry.name, attempt + 1, exc)
                        break
                    await asyncio.sleep(pause)  # a generation the client left is still winding down
                except (httpx.HTTPError, ValueError, OSError) as exc:
                    log.warning("unloading %s failed: %s", entry.name, exc)
                    break
            self.loaded.add(self.upstream_id(entry))
            self._export()
            return False
        finally:
            self._unloading.pop(entry.name, None)
            done.set_result(None)

    async def unload_now(self, entry: ModelEntry) -> bool:
        """Unload on request (the console's admin action): never under a request using it."""
        if self._in_use.get(entry.name) or entry.name in self._loading:
            return False
        return await self._unload(entry, reason="asked by an admin")

    async def unload_idle(self) -> None:
        """Unload models idle for longer than ``idle_unload_after`` seconds."""
        if not self.idle_unload_after or self.registry is None or not self.upstream.manages_models:
            return
        for entry in self.registry:
            # checked right before each unload: the previous one's await may have let a request in
            if (not self.is_loaded(entry) or entry.pinned or self._in_use.get(entry.name)
                    or entry.name in self._loading):
                continue
            now = time.monotonic()
            last = self._last_used.setdefault(entry.name, now)
            if now - last >= self.idle_unload_after:
                await self._unload(entry, reason=f"idle for {now - last:.0f}s")
