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
import math
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Set
from typing import Any

from app.access.control import Access, file_mtime
from app.access.keys import ApiKey
from app.core.errors import GatewayError
from app.core.hardware import GIB, HostMemory, host_memory
from app.core.metrics import Metrics
from app.core.recent import Recent
from app.core.registry import ModelEntry, Registry, RegistryError, load_registry
from app.core.settings import Settings
from app.policy.breaker import Breaker
from app.policy.concurrency import AdaptiveLimit
from app.policy.limiter import Limiter
from app.policy.residency import Residency
from app.policy.routing import Route, choose
from app.upstream.client import Upstream
from app.upstream.fleet import Fleet
from app.upstream.footprint import FILE_NAME as FOOTPRINTS
from app.upstream.footprint import Footprints, LoadMeter, private_bytes
from app.upstream.inventory import Inventory
from app.upstream.managed import LocalModelSpec, ManagedFoundry

log = logging.getLogger("foundry_gateway")
CHAT = frozenset({"chat"})


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.memory: HostMemory = host_memory(settings.host_ram_gb, settings.ram_reserve_gb)
        self.registry: Registry = load_registry(settings.registry_path)  # a bad registry at start is fatal
        self._registry_mtime = file_mtime(settings.registry_path)
        self.metrics.registry_reloads.labels("ok").inc()
        external = settings.upstream_mode == "external"
        self.upstream = Upstream(settings, base_url=self._external_url() if external else None)
        self.inventory = Inventory(
            self.upstream, self.metrics, budget_gb=lambda: self.memory.budget_gb,
            load_timeout=settings.load_timeout, idle_unload_after=settings.idle_unload_after,
            footprints=Footprints(settings.foundry_cache_dir / FOOTPRINTS if settings.upstream_kind == "foundry"
                                  else None),
            meter=LoadMeter(self._runtime_private_bytes),
        )
        self.preload: dict[str, str] = {}  # GATEWAY_PRELOAD: model → "loaded" or why not
        self.preloading = False
        self.access = Access(settings, self.metrics)  # team keys and quotas (GATEWAY_KEYS_FILE)
        self.recent = Recent()  # the last minutes, for the console
        self.fleet = Fleet(settings, on_change=lambda node, up: self.metrics.node_up.labels(node).set(int(up))) \
            if settings.nodes else None  # front mode: nodes, not a runtime, behind this gateway
        self.breaker = Breaker(
            settings.breaker_failures, settings.breaker_cooldown,
            on_change=lambda model, is_open: self.metrics.breaker_open.labels(model).set(int(is_open)),
        )
        self.residency = Residency(self._fit_together, hold=settings.swap_hold)
        self.admission = Limiter("the gateway", self._per_worker(settings.max_in_flight),
                                 self._per_worker(settings.queue_size), settings.queue_timeout,
                                 aging=settings.batch_aging)
        self._limiters: dict[str, Limiter] = {}
        self._controllers: dict[str, AdaptiveLimit] = {}
        self._routes: dict[tuple[object, ...], Route] = {}
        keys = list(settings.all_api_keys)
        if keys and settings.admin_api_key:
            keys.append(settings.admin_api_key)  # the admin key opens everything
        self._api_keys = tuple(k.encode() for k in keys)
        self.managed: ManagedFoundry | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.draining = False
        self._apply_registry(self.registry)
        self.metrics.host_ram.set(self.memory.total_gb * GIB)
        self.metrics.ram_budget.set(self.memory.budget_gb * GIB)

    # --- routing and admission --------------------------------------------------------------------

    def route(self, model: str | None, task: str | None, need: frozenset[str] = CHAT,
              latency_budget_ms: float | None = None, allowed: frozenset[str] | None = None) -> Route:
        """The routing policy's answer, memoised: it only changes with the registry, the upstream's
        inventory, the breaker or measured sizes, and all are part of the key (or clear the cache)."""
        available = self.inventory.available if self.fleet is None else self._fleet_available()
        cooling = self.breaker.skipped()
        pinned = self.pinned_loaded()
        key = (model, task, need, latency_budget_ms, allowed, available, self.breaker.version,
               self.inventory.footprints.version, tuple(pinned.items()))
        route = self._routes.get(key)
        if route is None:
            route = choose(
                self.registry, model=model, task=task, default_task=self.settings.default_task,
                # a front has no runtime of its own: each node's budget decides (placement)
                budget_gb=self.memory.budget_gb if self.fleet is None else math.inf,
                available=available, cooling=cooling, need=need,
                measured=self.measured_gb(), rank_by=self.settings.rank_by, latency_budget_ms=latency_budget_ms,
                allowed=allowed, pinned=pinned,
            )
            if len(self._routes) >= 1024:  # clients choose the strings in the key: stay bounded
                self._routes.clear()
            self._routes[key] = route
        return route

    def limiter(self, entry: ModelEntry) -> Limiter:
        limiter = self._limiters.get(entry.name)
        if limiter is None:
            limiter = Limiter(f"model '{entry.name}'", self._model_limit(entry),
                              self._per_worker(self.settings.queue_size), self.settings.queue_timeout,
                              aging=self.settings.batch_aging)
            self._limiters[entry.name] = limiter
            self.metrics.concurrency_limit.labels(entry.name).set(limiter.limit)
        return limiter

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

    def controller(self, entry: ModelEntry) -> AdaptiveLimit | None:
        """The model's adaptive limit, or None when its limit is fixed."""
        return self._controllers.get(entry.name)

    def pinned_loaded(self) -> dict[str, float]:
        """The loaded registry models that never unload (``pinned``), with the GiB each holds: every other model
        must fit beside them. A front has none of its own."""
        if self.fleet is not None or not self.upstream.manages_models:
            return {}
        return {e.name: self.inventory.ram_gb(e) for e in self._pinned if self.inventory.is_loaded(e)}

    def _fleet_available(self) -> frozenset[str]:
        """Front mode: the registry models some healthy node has."""
        assert self.fleet is not None
        return frozenset(name for node in self.fleet.nodes.values() if node.healthy
                         for name, state in node.models.items() if state.available is not False)

    def measured_gb(self) -> dict[str, float]:
        """What registry models were measured to use, GiB by name."""
        out = {}
        for entry in self.registry:
            measured = self.inventory.measured_gb(entry)
            if measured is not None:
                out[entry.name] = measured
        return out

    def _runtime_private_bytes(self) -> int | None:
        """The managed runtime's private memory now (None for an external one: not ours to read)."""
        pid = self.managed.pid if self.managed is not None else None
        return private_bytes(pid) if pid else None

    def _fit_together(self, names: Set[str]) -> bool:
        """Whether these registry models fit the RAM budget at once, beside the loaded pinned ones (which never
        make room); unknown names count nothing."""
        total = sum(self.inventory.ram_gb(e) for e in self.registry
                    if e.pinned and e.name not in names and self.inventory.is_loaded(e))
        for name in names:
            entry = self.registry.lookup(name)
            total += self.inventory.ram_gb(entry) if entry is not None else 0.0
        return total <= self.memory.budget_gb

    @property
    def limiters(self) -> dict[str, Limiter]:
        """Per-model limiters created so far (for status pages)."""
        return dict(self._limiters)

    def _model_limit(self, entry: ModelEntry) -> int:
        """A registry max_concurrency fixes the limit; otherwise the adaptive controller's, or the setting."""
        settings = self.settings
        if entry.max_concurrency or not settings.adaptive_concurrency:
            self._controllers.pop(entry.name, None)
            return self._per_worker(entry.max_concurrency or settings.model_concurrency)
        controller = self._controllers.get(entry.name)
        if controller is None:
            low = self._per_worker(settings.concurrency_min)
            high = max(low, self._per_worker(settings.concurrency_max))
            controller = self._controllers[entry.name] = AdaptiveLimit(
                minimum=low, maximum=high, initial=min(high, max(low, self._per_worker(settings.concurrency_initial))))
        return controller.limit

    def _per_worker(self, limit: int) -> int:
        """This worker's share of a limit: with N workers each enforces 1/N, so together they never exceed
        it (``foundry-gateway serve`` refuses worker counts that cannot split the limits)."""
        return max(1, limit // self.settings.workers)

    def check_key(self, authorization: str | None, required: tuple[bytes, ...] | None = None) -> None:
        """Constant-time API key check (401 in OpenAI's format)."""
        if required is None:
            self.authenticate(authorization)
            return
        if required and not _matches(_bearer(authorization), required):
            raise _unauthorized()

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The team key a request presents (``GATEWAY_KEYS_FILE``), None for a flat ``GATEWAY_API_KEYS`` or
        admin key or when no keys are set; else 401."""
        team = self.access.keyring
        if not self._api_keys and self.settings.keys_file is None:
            return None  # no keys configured: open (the start-up warning says so)
        token = _bearer(authorization)
        key = self.access.find(token.decode("latin-1")) if len(team) else None
        if key is not None:
            return key
        admin = self.settings.admin_api_key
        accepted = self._api_keys or ((admin.encode(),) if admin else ())  # the admin key opens everything
        if accepted and _matches(token, accepted):
            return None
        raise _unauthorized()  # a keys file with no keys lets nobody in

    # --- registry ----------------------------------------------------------------------------------

    def _apply_registry(self, registry: Registry) -> None:
        self.registry = registry
        self._pinned = tuple(e for e in registry if e.pinned)
        self._routes = {}
        self.inventory.set_registry(registry)
        self.metrics.set_vocabulary((e.name for e in registry), registry.tasks)
        self.metrics.registry_models.set(len(registry))
        for name in list(self._limiters):
            if registry.lookup(name) is None:
                del self._limiters[name]
        for name in list(self._controllers):
            if registry.lookup(name) is None:
                del self._controllers[name]
        for entry in registry:
            if name_limiter := self._limiters.get(entry.name):
                name_limiter.set_limit(self._model_limit(entry))
                self.metrics.concurrency_limit.labels(entry.name).set(name_limiter.limit)

    def reload_registry(self, reason: str = "request") -> tuple[bool, str]:
        """Load the registry file again; a bad file is rejected and the last good one stays."""
        path = self.settings.registry_path
        self._registry_mtime = file_mtime(path)
        try:
            registry = load_registry(path)
        except RegistryError as exc:
            self.metrics.registry_reloads.labels("error").inc()
            problems = "; ".join(exc.problems)
            log.error("registry reload (%s) rejected, keeping the last good one: %s", reason, problems)
            return False, problems
        self._apply_registry(registry)
        self.metrics.registry_reloads.labels("ok").inc()
        log.info("registry reloaded (%s): %d models", reason, len(registry))
        if self.managed is not None and self.managed.models != self.local_models():
            log.warning("the reloaded registry changes local model folders: they are registered with Foundry "
                        "Local when the managed runtime next starts (restart the gateway to apply now)")
        return True, f"{len(registry)} models"

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        for warning in exposure_warnings(self.settings):
            log.warning("%s", warning)
        if self.settings.registry_watch_interval > 0:  # the registry and the keys file
            self._spawn(self._watch_registry())
        if self.fleet is not None:  # a front: its nodes run the runtimes
            await self.fleet.poll_all()
            self._spawn(self.fleet.run())
            healthy = [n.name for n in self.fleet.nodes.values() if n.healthy]
            log.info("front of %d nodes (%s healthy)", len(self.fleet.nodes), ", ".join(healthy) or "none")
            return
        if self.settings.upstream_mode == "managed":
            await self._start_managed()
        await self.inventory.refresh()
        if not self.inventory.up:
            log.warning("upstream %s not reachable yet: %s", self.upstream.base_url, self.inventory.last_error)
        if self.settings.preload and self.upstream.manages_models:
            self.preloading = True
            self._spawn(self._preload())
        self._spawn(self._refresh_loop())
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            hangup = getattr(signal, "SIGHUP", None)  # not on Windows: reload with POST /admin/reload there
            if hangup is not None:
                asyncio.get_running_loop().add_signal_handler(hangup, self.reload_registry, "SIGHUP")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        await self.upstream.aclose()
        if self.fleet is not None:
            await self.fleet.aclose()
        await self.access.aclose()
        if self.managed is not None:
            await self.managed.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    @property
    def healthy(self) -> bool:
        """Liveness: false only if the managed runtime's supervisor died (it should never)."""
        return self._supervisor is None or not self._supervisor.done() or self.draining

    @property
    def ready(self) -> bool:
        if self.fleet is not None:
            return any(n.healthy for n in self.fleet.nodes.values()) and len(self.registry) > 0 and not self.draining
        serving = self.managed is None or self.managed.serving
        return (serving and self.inventory.up and len(self.registry) > 0 and not self.draining
                and not self.preloading)

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
            await self._refresh()
            await self.inventory.unload_idle()
            self.upstream.prune_idle()

    async def _refresh(self) -> None:
        if self.managed is not None and not self.managed.serving:
            return  # the supervisor is bringing it back; it refreshes when it is up
        if await self.inventory.refresh():
            self.breaker.reset_transport_failures()  # it answers: connection failures said nothing of the models

    async def _watch_registry(self) -> None:
        path = self.settings.registry_path
        while True:
            await asyncio.sleep(self.settings.registry_watch_interval)
            try:
                if file_mtime(path) != self._registry_mtime:
                    self.reload_registry("file changed")
                self.access.reload_if_changed()
            except Exception:  # a bug in one reload must not stop every later one
                log.exception("watching the registry and keys files failed; watching on")

    # --- managed Foundry Local -----------------------------------------------------------------------

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
        self.managed.on_down.append(self._on_upstream_down)
        self.managed.on_restart.append(self._on_upstream_restart)
        self.managed.on_restart_failed.append(lambda _: self.metrics.upstream_restart_failures.inc())
        self._supervisor = asyncio.ensure_future(self.managed.run_supervisor())
        self._tasks.append(self._supervisor)

    def _on_upstream_down(self, reason: str) -> None:
        log.warning("%s: requests wait for the restart", reason)
        self.inventory.mark_down(reason)

    def _on_upstream_restart(self, url: str) -> None:
        log.warning("managed Foundry Local restarted at %s", url)
        self.metrics.upstream_restarts.inc()
        self.upstream.set_base_url(url)
        self.breaker.reset()  # a new runtime: old failures say nothing about it
        self._spawn(self.inventory.restore_after_restart())

    @property
    def upstream_serving(self) -> bool:
        """False while a managed runtime is known to be down (external upstreams: always True)."""
        return self.managed is None or self.managed.serving

    async def upstream_recovered(self, deadline: float) -> bool:
        """After a connection failure: wait (until ``deadline``, loop time) for a managed runtime to be back."""
        if self.managed is None:
            return False
        remaining = min(deadline - asyncio.get_running_loop().time(), self.settings.foundry_start_timeout)
        return remaining > 0 and await self.managed.recovered(remaining)

    def _external_url(self) -> str | None:
        return self.settings.upstream_url or discover_foundry_url()


_FOUNDRY_TASKS = {"code": "coding", "embeddings": "embeddings", "transcription": "automatic-speech-recognition",
                  "vision": "vision-language-chat"}


def _foundry_task(entry: ModelEntry) -> str:
    """The ``task`` metadata Foundry Local wants when registering a local folder."""
    return _FOUNDRY_TASKS.get(entry.tasks[0], "chat-completion") if len(entry.tasks) == 1 else "chat-completion"


def _bearer(authorization: str | None) -> bytes:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip().encode()
    return b""


def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    ok = False
    for key in keys:  # compare with every key: timing does not tell which one matched
        ok |= hmac.compare_digest(token, key)
    return ok


def _unauthorized() -> GatewayError:
    return GatewayError(401, "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
                        code="invalid_api_key", headers={"www-authenticate": "Bearer"})


def discover_foundry_url() -> str | None:
    """Ask the ``foundry`` CLI where the service runs (its port can change between restarts).

    Foundry Local CLI 0.10 renamed ``foundry service`` to ``foundry server``; both are asked, newest first.
    """
    exe = shutil.which("foundry")
    if exe is None:
        return None
    for command in ("server", "service"):
        try:
            out = subprocess.run([exe, command, "status"], capture_output=True, text=True, timeout=15).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for word in out.split():
            if word.startswith("http://") or word.startswith("https://"):
                return word.rstrip("/.").removesuffix("/openai/status")
    return None


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
