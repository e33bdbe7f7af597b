"""Routing policy: which model answers a request, and why. Pure: no I/O, no clocks.

The classic ``select_model.py`` rule, done properly: for the task, take registry entries in preference
order and pick the first whose ``min_ram_gb`` fits the host's budget — skipping models the upstream
does not have (once its inventory is known), models cooling down after failures, and models without a
capability the request needs (``tools``, ``json_schema``, ``embeddings``…). The rest of the viable list
is kept as fallbacks. A ``model`` naming a registry entry pins it.

Endpoints that are not chat (embeddings, transcription) route by capability: with no task header,
their candidates are every model that can serve them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass
from enum import StrEnum

from app.core.errors import NO_RETRY, GatewayError
from app.core.registry import ModelEntry, Registry

_FEATURE_WORDS = {"tools": "tool calls (`tools`)", "json_schema": "`response_format` json_schema",
                  "vision": "image input", "embeddings": "embeddings", "transcription": "audio transcription",
                  "chat": "chat"}

AUTO_MODELS = frozenset({"", "auto", "default"})


# The words below are what /v1/route, the 503s' ``candidates`` and the X-Gateway-Route header show, and the
# ``reason`` label of gateway_routing_decisions_total: they are ``str`` and their values never change.

class Decision(StrEnum):
    """What the policy did with one candidate."""

    SELECTED = "selected"
    FALLBACK = "fallback"
    SKIPPED = "skipped"


class Skip(StrEnum):
    """The fixed reasons a candidate is skipped (the others say figures: RAM, latency, the breaker's cause)."""

    NOT_ALLOWED = "not allowed for this key"
    NOT_ON_UPSTREAM = "not available on the upstream"


class RouteKind(StrEnum):
    """How the model was chosen: named by the request, or by the policy."""

    PINNED = "pinned"
    AUTO = "auto"


class RamSource(StrEnum):
    """Where the RAM figure a fit was judged on comes from."""

    REGISTRY = "registry"  # the entry's min_ram_gb
    MEASURED = "measured"  # what it was measured to use, once that is larger


class RankBy(StrEnum):
    """How viable models are ordered (``GATEWAY_RANK_BY``)."""

    ORDER = "order"  # the registry's
    RATING = "rating"  # the team's mean rating for the task
    LATENCY = "latency"  # measured p50


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy thought of one candidate."""

    model: str
    min_ram_gb: float
    decision: Decision
    reason: str  # a Skip, or words with the figures
    ram_gb: float = 0.0  # the figure fit was judged on
    ram_source: RamSource = RamSource.REGISTRY

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "min_ram_gb": self.min_ram_gb, "decision": self.decision, "reason": self.reason,
                "ram_gb": round(self.ram_gb, 4), "ram_source": self.ram_source}


@dataclass(frozen=True, slots=True)
class Route:
    task: str
    model: ModelEntry
    fallbacks: tuple[ModelEntry, ...]
    reason: RouteKind  # the metric label and the start of X-Gateway-Route
    explanation: str
    verdicts: tuple[Verdict, ...]

    @property
    def header(self) -> str:
        return f"{self.reason}; {self.explanation}"

    def as_dict(self) -> dict[str, object]:
        return {
            "task": self.task,
            "model": self.model.name,
            "reason": self.reason,
            "explanation": self.explanation,
            "fallbacks": [m.name for m in self.fallbacks],
            "candidates": [v.as_dict() for v in self.verdicts],
        }


def resolve_task(registry: Registry, header_task: str | None, default_task: str) -> str:
    task = (header_task or "").strip() or default_task
    if task not in registry.tasks:
        known = ", ".join(registry.tasks)
        raise GatewayError(
            400, f"Unknown task '{task}'. Known tasks: {known}.", code="unknown_task", param="task"
        )
    return task


def _gb(value: float) -> str:
    if math.isinf(value):  # a front: no budget of its own
        return "the nodes' budgets"
    return f"{round(value, 2):g} GiB"


def ram_need(entry: ModelEntry, measured: Mapping[str, float] | None) -> tuple[float, RamSource]:
    """The RAM a model is taken to need and where the figure comes from: the registry's ``min_ram_gb``, or what
    it was measured to use once that is larger."""
    got = (measured or {}).get(entry.name)
    if got is not None and got > entry.min_ram_gb:
        return got, RamSource.MEASURED
    return entry.min_ram_gb, RamSource.REGISTRY


def _verdict(entry: ModelEntry, decision: Decision, reason: str, measured: Mapping[str, float] | None) -> Verdict:
    ram, source = ram_need(entry, measured)
    return Verdict(entry.name, entry.min_ram_gb, decision, reason, ram, source)


def _figure(ram: float, source: RamSource) -> str:
    return _gb(ram) if source == RamSource.REGISTRY else f"measured {_gb(ram)}"


def choose(
    registry: Registry,
    *,
    model: str | None,
    task: str | None,
    default_task: str,
    budget_gb: float,
    available: Set[str] | None = None,
    cooling: Mapping[str, str] | None = None,
    need: Set[str] = frozenset({"chat"}),
    measured: Mapping[str, float] | None = None,
    rank_by: str = RankBy.ORDER,
    latency_budget_ms: float | None = None,
    allowed: Set[str] | None = None,
    pinned: Mapping[str, float] | None = None,
) -> Route:
    """Pick the model for a request.

    ``available`` is the set of registry names the upstream has (None while unknown: nothing is
    filtered); ``cooling`` the names the circuit breaker is skipping for now, each with its reason;
    ``need`` the capabilities the request needs; ``measured`` what models were measured to use (GiB by name);
    ``rank_by`` how viable models are ordered (``order``: the registry's; ``rating``: the team's mean rating for
    the task; ``latency``: measured p50), unmeasured ones after measured ones; ``latency_budget_ms`` skips
    models whose measured p95 is over it (pinned requests are not subject to it); ``pinned`` the loaded registry
    models that never unload (``pinned: true``) and the GiB each holds: the others must fit beside them.
    Raises GatewayError: 400 unknown task or a capability nobody has, 404 unknown model, 503 nothing viable.
    """
    requested = (model or "").strip()
    if requested.lower() not in AUTO_MODELS:
        return _pinned(registry, requested, task, budget_gb, available, need, measured, pinned)

    by_capability = next((c for c in need if c != "chat" and c in ("embeddings", "transcription")), None)
    if by_capability and not (task or "").strip():
        chosen_task = by_capability
        entries = tuple(sorted((e for e in registry if by_capability in e.capabilities),
                               key=lambda e: (e.priority, e.index)))
        if not entries:
            raise GatewayError(400, f"No model in the registry serves {_FEATURE_WORDS[by_capability]} (add one "
                                    f"with capabilities [\"{by_capability}\"]).", code="unsupported_value")
    else:
        chosen_task = resolve_task(registry, task, default_task)
        entries = registry.for_task(chosen_task)
    if entries and not any(need <= set(entry.capabilities) for entry in entries):
        # no model for the task can do it at all (whatever fits or runs now): a 400 that says what to declare
        covered = {c for entry in entries for c in entry.capabilities}
        raise _nobody_can(chosen_task, sorted(need - covered) or sorted(need - {"chat"}), entries)
    verdicts: list[Verdict] = []
    viable: list[tuple[ModelEntry, str]] = []
    for entry in entries:
        if allowed is not None and entry.name not in allowed:
            verdicts.append(_verdict(entry, Decision.SKIPPED, Skip.NOT_ALLOWED, measured))
            continue
        missing = [c for c in need if c not in entry.capabilities]
        if missing:
            verdicts.append(_verdict(entry, Decision.SKIPPED, f"no {', '.join(missing)}", measured))
            continue
        ram, source = ram_need(entry, measured)
        p95 = entry.measured.latency_p95_ms if entry.measured else None
        if ram > budget_gb:
            reason = f"needs {_figure(ram, source)} > {_gb(budget_gb)} budget"
        elif beside := beside_pinned(entry, ram, budget_gb, pinned):
            reason = beside
        elif available is not None and entry.name not in available:
            reason = Skip.NOT_ON_UPSTREAM
        elif cooling and entry.name in cooling:
            reason = cooling[entry.name]
        elif latency_budget_ms is not None and p95 is not None and p95 > latency_budget_ms:
            reason = f"p95 {p95:,.0f} ms > budget {latency_budget_ms:,.0f}"
        else:
            viable.append((entry, f"fits ({_figure(ram, source)} ≤ {_gb(budget_gb)})"))
            continue
        verdicts.append(_verdict(entry, Decision.SKIPPED, reason, measured))

    if not viable:
        if verdicts and all(v.reason == Skip.NOT_ALLOWED for v in verdicts):
            raise GatewayError(403, f"This key may use no model for task '{chosen_task}'.", code="model_not_allowed")
        cooling_out = any(v.reason == (cooling or {}).get(v.model) for v in verdicts)  # skipped only for that
        raise _nothing_viable(entries, chosen_task, budget_gb, verdicts, measured, cooling_out)
    ranked = rank(viable, rank_by, chosen_task)
    for position, (entry, reason) in enumerate(ranked):
        verdicts.append(_verdict(entry, Decision.SELECTED if position == 0 else Decision.FALLBACK,
                                 f"{reason}; {merit(entry, rank_by, chosen_task)}" if rank_by != RankBy.ORDER
                                 else reason,
                                 measured))
    order = {e.name: i for i, e in enumerate(entries)}
    verdicts.sort(key=lambda v: order[v.model])  # listed as the registry has them, whatever the ranking
    winner = ranked[0][0]
    if rank_by == RankBy.ORDER:
        explanation = f"first viable of {len(entries)} for task {chosen_task}"
    else:
        explanation = f"{merit(winner, rank_by, chosen_task)}; best of {len(ranked)} viable by {rank_by}"
    return Route(chosen_task, winner, tuple(e for e, _ in ranked[1:]), RouteKind.AUTO, explanation, tuple(verdicts))




def latency_budget(value: str) -> float:
    """An ``X-Latency-Budget-Ms`` header's value: milliseconds > 0 (else a 400)."""
    try:
        budget = float(value.strip())
    except ValueError:
        budget = -1.0
    if not 0 < budget < 1e9:
        raise GatewayError(400, "X-Latency-Budget-Ms must be a number of milliseconds > 0.", code="invalid_value",
                           param="X-Latency-Budget-Ms")
    return budget


def rank(viable: list[tuple[ModelEntry, str]], rank_by: str, task: str) -> list[tuple[ModelEntry, str]]:
    """Viable models in the order they are tried: by the registry (stable), or best measured first with the
    unmeasured after them in registry order."""
    if rank_by == RankBy.RATING:
        def key(item: tuple[ModelEntry, str]) -> tuple[int, float]:
            rating = item[0].measured.rating_for(task) if item[0].measured else None
            return (0, -rating[0]) if rating else (1, 0.0)
        return sorted(viable, key=key)
    if rank_by == RankBy.LATENCY:
        def by_latency(item: tuple[ModelEntry, str]) -> tuple[int, float]:
            p50 = item[0].measured.latency_p50_ms if item[0].measured else None
            return (0, p50) if p50 is not None else (1, 0.0)
        return sorted(viable, key=by_latency)
    return viable


def merit(entry: ModelEntry, rank_by: str, task: str) -> str:
    """What the ranking saw in a model, in words ("rating 4.3 (n=30) for code")."""
    if rank_by == RankBy.RATING:
        rating = entry.measured.rating_for(task) if entry.measured else None
        return f"rating {rating[0]:.1f} (n={rating[1]}) for {task}" if rating else "not rated"
    if rank_by == RankBy.LATENCY:
        p50 = entry.measured.latency_p50_ms if entry.measured else None
        return f"latency p50 {p50:,.0f} ms" if p50 is not None else "latency not measured"
    return ""


def beside_pinned(entry: ModelEntry, ram: float, budget_gb: float, pinned: Mapping[str, float] | None) -> str:
    """Why ``entry`` can never run beside the loaded pinned models (they never unload), or "" if it can."""
    others = {name: gb for name, gb in (pinned or {}).items() if name != entry.name}
    room = budget_gb - sum(others.values())
    if not others or ram <= room:
        return ""
    held = ", ".join(f"{name} ({_gb(gb)})" for name, gb in sorted(others.items()))
    return f"needs {_gb(ram)} > {_gb(max(room, 0.0))} left beside pinned {held}"


def _pinned(
    registry: Registry, requested: str, task: str | None, budget_gb: float, available: Set[str] | None,
    need: Set[str], measured: Mapping[str, float] | None, pinned: Mapping[str, float] | None,
) -> Route:
    entry = registry.lookup(requested)
    if entry is None:
        known = ", ".join(e.name for e in registry)
        raise GatewayError(
            404,
            f"Model '{requested}' is not in the registry. Known models: {known}; or use model 'auto'.",
            code="model_not_found",
            param="model",
        )
    missing = [c for c in sorted(need) if c not in entry.capabilities]
    if missing:
        features = ", ".join(_FEATURE_WORDS.get(c, c) for c in missing)
        raise GatewayError(
            400, f"Model '{entry.name}' cannot do {features} (its capabilities: {', '.join(entry.capabilities)}).",
            code="unsupported_value", param="model",
        )
    header_task = (task or "").strip()
    chosen_task = header_task if header_task in entry.tasks else entry.task
    ram, source = ram_need(entry, measured)
    if ram > budget_gb:
        raise GatewayError(
            503,
            f"Model '{entry.name}' needs {_figure(ram, source)} of RAM; this host's budget is {_gb(budget_gb)}.",
            code="insufficient_ram",
            param="model",
        )
    if beside := beside_pinned(entry, ram, budget_gb, pinned):
        raise GatewayError(503, f"Model '{entry.name}' {beside}: it cannot be loaded on this host while they stay "
                                "(pinned models are never unloaded).", code="insufficient_ram", param="model")
    if available is not None and entry.name not in available:
        fix = missing_fix(entry)
        raise GatewayError(503, f"Model '{entry.name}' is not available on the upstream: {fix}.",
                           code="model_unavailable", param="model", headers=dict(NO_RETRY), detail={"fix": fix})
    verdict = _verdict(entry, Decision.SELECTED, f"pinned by request ('{requested}'); {_figure(ram, source)}", measured)
    return Route(chosen_task, entry, (), RouteKind.PINNED, f"model '{requested}' requested", (verdict,))


def _nobody_can(task: str, missing: list[str], entries: tuple[ModelEntry, ...]) -> GatewayError:
    """400: no registry model for the task has a capability the request needs — and how to declare one."""
    features = ", ".join(_FEATURE_WORDS.get(c, c) for c in missing)
    example = ", ".join(f'"{c}"' for c in dict.fromkeys(("chat", *missing)))
    return GatewayError(400, f"No model for task '{task}' can do {features} (the registry's models for it: "
                             f"{', '.join(e.name for e in entries)}). A model that can is declared in models.json "
                             f"with \"capabilities\": [{example}] on its entry.", code="unsupported_value")


def _nothing_viable(entries: tuple[ModelEntry, ...], task: str, budget_gb: float,
                    verdicts: list[Verdict], measured: Mapping[str, float] | None, cooling_out: bool) -> GatewayError:
    """503 with every candidate and why it was skipped; when what keeps the capable ones out is that the upstream
    lacks them, the command that brings one — and asking again cannot help (the SDKs are told not to retry)
    unless one is only cooling down (``cooling_out``: retry after a while)."""
    smallest = min(entries, key=lambda e: ram_need(e, measured)[0])
    ram, source = ram_need(smallest, measured)
    candidates = [v.as_dict() for v in verdicts]
    if ram > budget_gb:
        message = (
            f"No model for task '{task}' fits this host: the smallest, '{smallest.name}', needs "
            f"{_figure(ram, source)}; this host's budget is {_gb(budget_gb)}."
        )
        return GatewayError(503, message, code="no_viable_model", param="task", headers=dict(NO_RETRY),
                            detail={"candidates": candidates})
    skipped = "; ".join(f"{v.model}: {v.reason}" for v in verdicts)
    message = f"No model for task '{task}' is available right now ({skipped})."
    missing = [e for e in entries for v in verdicts if v.model == e.name and v.reason == Skip.NOT_ON_UPSTREAM]
    if missing:
        fix = missing_fix(missing[0])
        message += f" To bring {missing[0].name}: {fix}."
        return GatewayError(503, message, code="no_viable_model", param="task",
                            headers={"retry-after": "10"} if cooling_out else dict(NO_RETRY),
                            detail={"candidates": candidates, "fix": fix})
    return GatewayError(503, message, code="no_viable_model", param="task", headers={"retry-after": "10"},
                        detail={"candidates": candidates})


def missing_fix(entry: ModelEntry) -> str:
    """What makes a registry model the upstream lacks available: a catalog model is downloaded; a local folder
    (``path``: compiled, or brought in) is registered by the managed runtime when it starts."""
    if entry.path is not None:
        return (f"it is in the registry as a local model folder ({entry.path}) that the runtime has not registered "
                "yet: restart the gateway (a managed runtime registers the registry's folders when it starts; an "
                "external one needs it registered there)")
    return f"foundry-gateway pull {entry.name}"
