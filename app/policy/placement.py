"""Which node of a fleet serves a request for a model: pure, so every rule is a unit test.

A front (``GATEWAY_NODES``) sees each node through its status (polled often) plus the requests the front
itself has in flight there now (the status is a moment old; the front's own count is not). For a model:

1. candidates: healthy nodes that have the model and where it fits that node's RAM budget;
2. first, nodes where it is already loaded and that have room (in flight + queued below the node's limit for
   it), least busy first — a load costs seconds, a queue slot costs nothing;
3. then nodes where it is not loaded but fits — scaling the model out, because every node that has it loaded
   is saturated (or none has it);
4. last, the saturated nodes that have it loaded, least busy first: they queue it.

Nodes where the model is cooling down (the node's circuit breaker) are skipped; equally good nodes take turns.
Every node gets a verdict and a reason, for ``/v1/route`` and ``X-Gateway-Route``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model on one node, as the node's status says."""

    available: bool | None = None  # the node's runtime has it (None: unknown)
    fits: bool = True  # within that node's RAM budget
    loaded: bool = False
    in_flight: int = 0
    queued: int = 0
    limit: int = 1  # the node's concurrency limit for it
    cooling_down: bool = False  # the node's circuit breaker skips it after failures


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    healthy: bool
    models: Mapping[str, ModelState] = field(default_factory=dict)
    front_in_flight: Mapping[str, int] = field(default_factory=dict)  # this front's own requests, by model
    why_down: str = "down"


@dataclass(frozen=True, slots=True)
class Placement:
    order: tuple[str, ...]  # nodes to try, best first
    verdicts: tuple[tuple[str, str, str], ...]  # (node, decision, reason), decision: selected|fallback|skipped

    @property
    def explanation(self) -> str:
        chosen = next((f"node {n}: {r}" for n, d, r in self.verdicts if d == "selected"), "no node")
        return chosen


def _busy(node: NodeView, model: str, state: ModelState) -> int:
    """Requests on the model there: what the node said, or what this front knows it sent since, if more."""
    return max(state.in_flight + state.queued, node.front_in_flight.get(model, 0))


def place(model: str, nodes: Sequence[NodeView], turn: int = 0) -> Placement:
    """``turn`` breaks ties: equally good nodes take turns (the caller counts up), so one node that answers
    badly is not everyone's first try."""
    ready: list[tuple[float, int, str, str]] = []  # loaded, with room
    scale_out: list[tuple[float, int, str, str]] = []  # not loaded, fits
    saturated: list[tuple[float, int, str, str]] = []  # loaded, no room
    skipped: list[tuple[str, str, str]] = []
    for position, node in enumerate(nodes):
        state = node.models.get(model)
        tie = (position - turn) % len(nodes)
        if not node.healthy:
            skipped.append((node.name, "skipped", node.why_down))
        elif state is None or state.available is False:
            skipped.append((node.name, "skipped", "does not have it"))
        elif not state.fits:
            skipped.append((node.name, "skipped", "does not fit its RAM budget"))
        elif state.cooling_down:
            skipped.append((node.name, "skipped", "the model is cooling down there after failures"))
        else:
            busy = _busy(node, model, state)
            load = busy / max(state.limit, 1)
            others = sum(node.front_in_flight.values())
            if state.loaded and busy < state.limit:
                ready.append((load, tie, node.name, f"loaded there, {busy}/{state.limit} busy"))
            elif state.loaded:
                saturated.append((load, tie, node.name, f"loaded there but saturated, {busy}/{state.limit} busy"))
            else:
                scale_out.append((float(others), tie, node.name, ""))
    why = ("not loaded there, fits: scaling out (every node with it loaded is saturated)" if saturated
           else "not loaded there, fits: loading it")
    scale_out = [(load, tie, name, why) for load, tie, name, _ in scale_out]
    ordered = sorted(ready) + sorted(scale_out) + sorted(saturated)
    verdicts = [(name, "selected" if i == 0 else "fallback", reason) for i, (_, _, name, reason) in enumerate(ordered)]
    return Placement(tuple(name for _, _, name, _ in ordered), (*verdicts, *skipped))
