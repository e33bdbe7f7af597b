"""What the status routes and the CLI show, built from the gateway's parts: one row per model (what it needs,
whether it fits, the upstream's state, its limits), each model on the nodes of a front, a node's status for its
front, and the console's page of state. Plain dicts, so the HTTP routes and ``foundry-gateway models`` share them."""

from __future__ import annotations

from typing import Any

from app import __version__
from app.access.middleware import Caller
from app.gateway import Gateway
from app.policy.routing import beside_pinned


def model_rows(gw: Gateway, task: str | None = None, *, show_paths: bool = True,
               allowed: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """One row per registry model (those in ``allowed`` only, when given: a team key sees its own): what it needs,
    whether it fits, and the upstream's state."""
    budget = gw.memory.budget_gb
    inv = gw.inventory
    cooling = gw.breaker.skipped()
    pinned = gw.router.pinned_loaded()
    rows = []
    for entry in gw.registry:
        if (task and task not in entry.tasks) or (allowed is not None and entry.name not in allowed):
            continue
        measured = inv.measured_gb(entry)
        need = inv.ram_gb(entry)
        beside = beside_pinned(entry, need, budget, pinned)
        fits = need <= budget and not beside
        available = None if inv.available is None else entry.name in inv.available
        limiter = gw.admission.limiter(entry)
        rows.append({
            "id": entry.name,
            "object": "model",
            "created": 0,
            "owned_by": "foundry-gateway",
            "task": entry.task,
            "tasks": list(entry.tasks),
            "min_ram_gb": entry.min_ram_gb,
            "measured_ram_gb": None if measured is None else round(measured, 4),
            "ram_gb": round(need, 4),
            "fits": fits,
            "pinned": entry.pinned,
            "measured": entry.measured.raw if entry.measured else None,
            "capabilities": list(entry.capabilities),
            "fit": (f"fits ({need:.3g} ≤ {budget:.1f} GiB budget)" if fits
                    else beside or f"needs {need:.3g} GiB > {budget:.1f} GiB budget"),
            "upstream_id": inv.upstream_id(entry),
            "available": available,
            "loaded": inv.is_loaded(entry) if available else False,
            "cooling_down": entry.name in cooling,
            "concurrency_limit": limiter.limit,
            "in_flight": limiter.in_flight,
            "queued": limiter.queued,
            "concurrency": "adaptive" if gw.admission.controller(entry) is not None else "fixed",
            "local_path": (str(entry.path) if entry.path else None) if show_paths else None,
            "notes": entry.notes,
        })
    return fleet_rows(gw, rows) if gw.fleet is not None else rows


def fleet_rows(gw: Gateway, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Front mode: each model's state on every node, and available/loaded where any healthy node says so."""
    assert gw.fleet is not None
    for row in rows:
        per_node = {}
        for node in gw.fleet.nodes.values():
            state = node.models.get(row["id"])
            per_node[node.name] = {"healthy": node.healthy, "available": state.available if state else None,
                                   "loaded": bool(state and state.loaded), "fits": bool(state and state.fits),
                                   "in_flight": (state.in_flight if state else 0), "queued": state.queued if state
                                   else 0, "limit": state.limit if state else 0}
        healthy = [v for v in per_node.values() if v["healthy"]]
        row["nodes"] = per_node
        row["available"] = any(v["available"] is not False for v in healthy) if healthy else False
        row["loaded"] = any(v["loaded"] for v in healthy)
    return rows


def node_status(gw: Gateway) -> dict[str, Any]:
    """This node's status for a front: models, loaded, limits, queues, budget."""
    overall = gw.admission.overall
    return {"ready": gw.ready, "budget_gb": round(gw.memory.budget_gb, 3), "front": gw.fleet is not None,
            "in_flight": overall.in_flight, "queued": overall.queued, "models": model_rows(gw, show_paths=False)}


def console_state(gw: Gateway, caller: Caller) -> dict[str, Any]:
    """The host's RAM budget and what uses it, the models, the last minutes of traffic, the last routing
    decisions with failed ones among them (never prompt text), a rejected registry reload and, in front mode, the
    nodes. A team key sees its own models and its own requests; the admin key and keys without a team see all."""
    team = caller.key.name if caller.key is not None and not caller.admin else None
    allowed = gw.access.allowed(caller.key, gw.registry)
    rows = model_rows(gw, show_paths=False, allowed=allowed)
    loaded = [{"model": r["id"], "ram_gb": r["ram_gb"], "measured": r["measured_ram_gb"] is not None,
               "measured_ram_gb": r["measured_ram_gb"], "min_ram_gb": r["min_ram_gb"]}
              for r in model_rows(gw, show_paths=False) if r["loaded"]]  # the host's RAM: every model in it
    if allowed is not None:  # a team's view: the models it may not use are RAM in use, not names
        others = [m for m in loaded if m["model"] not in allowed]
        loaded = [m for m in loaded if m["model"] in allowed]
        if others:
            loaded.append({"model": "(other models)", "ram_gb": round(sum(m["ram_gb"] for m in others), 4),
                           "measured": False, "measured_ram_gb": None, "min_ram_gb": None})
    nodes = None
    if gw.fleet is not None:
        nodes = [{"node": n.name, "healthy": n.healthy, "why_down": n.why_down or None,
                  "loaded": sorted(m for m, s in n.models.items() if s.loaded),
                  "in_flight": sum(s.in_flight for s in n.models.values()),
                  "queued": sum(s.queued for s in n.models.values())} for n in gw.fleet.nodes.values()]
    return {
        "version": __version__, "ready": gw.ready, "admin": bool(gw.settings.admin_api_key),
        "you": {"admin": caller.admin, "key": caller.key.name if caller.key else None,
                "sees": f"the requests of key '{team}'" if team else "every request"},
        "host": {"total_gb": round(gw.memory.total_gb, 2), "budget_gb": round(gw.memory.budget_gb, 2),
                 "source": gw.memory.source, "loaded": loaded},
        "registry": {"models": len(gw.registry), "rejected": gw.live.rejected},
        "models": rows, "traffic": gw.recent.series(team), "decisions": gw.recent.decisions_of(team), "nodes": nodes,
    }
