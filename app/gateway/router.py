"""Which model a request gets: the routing policy (``app.policy.routing``, pure) fed with this gateway's facts —
the registry in force, what the upstream has (or, in front mode, what healthy nodes have), what cools down, what
models were measured to use and which pinned ones hold RAM — and memoised, since those facts change far less
often than requests come."""

from __future__ import annotations

import math
from collections.abc import Set

from app.core.hardware import HostMemory
from app.core.registry import ModelEntry, Registry
from app.core.settings import Settings
from app.policy.breaker import Breaker
from app.policy.routing import Route, choose
from app.upstream.fleet import Fleet
from app.upstream.inventory import Inventory

CHAT = frozenset({"chat"})


class Router:
    def __init__(self, settings: Settings, memory: HostMemory, inventory: Inventory, breaker: Breaker,
                 fleet: Fleet | None) -> None:
        self.settings = settings
        self.memory = memory
        self.inventory = inventory
        self.breaker = breaker
        self.fleet = fleet
        self.registry = Registry(())
        self._pinned: tuple[ModelEntry, ...] = ()
        self._routes: dict[tuple[object, ...], Route] = {}

    def apply(self, registry: Registry) -> None:
        self.registry = registry
        self._pinned = tuple(e for e in registry if e.pinned)
        self._routes = {}

    def route(self, model: str | None, task: str | None, need: frozenset[str] = CHAT,
              latency_budget_ms: float | None = None, allowed: frozenset[str] | None = None) -> Route:
        """The policy's answer, memoised: it only changes with the registry, the upstream's inventory, the
        breaker, measured sizes or the loaded pinned models, and all are part of the key (or clear the cache)."""
        available = self.inventory.available if self.fleet is None else self._fleet_available()
        cooling = self.breaker.skipped()  # first: it may move circuits along, and so the version in the key
        pinned = self.pinned_loaded()
        key = (model, task, need, latency_budget_ms, allowed, available, self.breaker.version,
               self.inventory.footprints.version, tuple(pinned.items()))
        route = self._routes.get(key)
        if route is None:
            route = choose(
                self.registry, model=model, task=task, default_task=self.settings.default_task,
                # a front has no runtime of its own: each node's budget decides (placement)
                budget_gb=self.memory.budget_gb if self.fleet is None else math.inf,
                available=available, cooling=cooling, need=need, measured=self.measured_gb(),
                rank_by=self.settings.rank_by, latency_budget_ms=latency_budget_ms, allowed=allowed, pinned=pinned,
            )
            if len(self._routes) >= 1024:  # clients choose the strings in the key: stay bounded
                self._routes.clear()
            self._routes[key] = route
        return route

    def pinned_loaded(self) -> dict[str, float]:
        """The loaded registry models that never unload (``pinned``), with the GiB each holds: every other model
        must fit beside them. A front has none of its own."""
        if self.fleet is not None or not self.inventory.upstream.manages_models:
            return {}
        return {e.name: self.inventory.ram_gb(e) for e in self._pinned if self.inventory.is_loaded(e)}

    def measured_gb(self) -> dict[str, float]:
        """What registry models were measured to use, GiB by name."""
        out = {}
        for entry in self.registry:
            measured = self.inventory.measured_gb(entry)
            if measured is not None:
                out[entry.name] = measured
        return out

    def fit_together(self, names: Set[str]) -> bool:
        """Whether these registry models fit the RAM budget at once, beside the loaded pinned ones (which never
        make room); unknown names count nothing. (The residency queue asks.)"""
        total = sum(self.inventory.ram_gb(e) for e in self._pinned
                    if e.name not in names and self.inventory.is_loaded(e))
        for name in names:
            entry = self.registry.lookup(name)
            total += self.inventory.ram_gb(entry) if entry is not None else 0.0
        return total <= self.memory.budget_gb

    def _fleet_available(self) -> frozenset[str] | None:
        """Front mode: the registry models some healthy node has (None: no node is healthy now, so what the
        fleet has is unknown — not "nothing")."""
        assert self.fleet is not None
        healthy = [node for node in self.fleet.nodes.values() if node.healthy]
        if not healthy:
            return None
        return frozenset(name for node in healthy
                         for name, state in node.models.items() if state.available is not False)
