"""A model's ``measured`` record in ``models.json``: what the team's benchmark found, written by ``foundry-gateway
bench --update-registry`` or ``registry annotate``, read by routing (``rank_by``, ``X-Latency-Budget-Ms``).

Shape (every part optional; unknown parts are kept as they are)::

    "measured": {
      "date": "2026-11-25T19:50:00+00:00", "gateway_version": "0.1.0",
      "prompt_set": {"file": "config/prompts.jsonl", "sha256": "…", "prompts": 8},
      "requests": 24, "errors": 0,
      "latency_ms": {"p50": 40.2, "p95": 55.0}, "ttft_ms": {"p50": 4.1, "p95": 6.0}, "tokens_per_s": 1390.6,
      "ram_gb": 0.022,
      "rating": {"mean": 4.1, "n": 90, "fluency": {"mean": 4.3, "n": 30}, …,
                 "by_task": {"chat": {"mean": 4.2, "n": 60}}},
      "reference_score": {"method": "rouge-l f1", "mean": 0.31, "n": 24},
      "host": {"cpu": "…", "cores": 2, "accelerator": "none", "ram_gb": 23.5}
    }
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Measured:
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ttft_p50_ms: float | None = None
    tokens_per_s: float | None = None
    rating: tuple[float, int] | None = None  # mean over every rated criterion and task, and how many scores
    rating_by_task: tuple[tuple[str, float, int], ...] = ()
    # the object as written, for writing back unchanged (not part of equality: entries stay hashable)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def rating_for(self, task: str) -> tuple[float, int] | None:
        """The mean rating for this task. A record rated per task has none for a task it was not rated on
        (a model rated only on code is not rated for chat); one without a per-task split has its overall."""
        for name, mean, count in self.rating_by_task:
            if name == task:
                return mean, count
        return None if self.rating_by_task else self.rating


def parse_measured(value: Any, problems: list[str]) -> Measured | None:
    """``value`` from the registry; a part of the wrong type is a problem (said once, precisely)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append("must be an object (written by `foundry-gateway bench --update-registry`)")
        return None

    for part in ("latency_ms", "ttft_ms", "rating", "reference_score", "prompt_set", "host"):
        if part in value and not isinstance(value[part], dict):
            problems.append(f"{part} must be an object")

    def number(*path: str) -> float | None:
        node: Any = value
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
        if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node) or node < 0:
            problems.append(f"{'.'.join(path)} must be a number ≥ 0")
            return None
        return float(node)

    def score(*path: str) -> tuple[float, int] | None:
        mean, count = number(*path, "mean"), number(*path, "n")
        return (mean, int(count or 0)) if mean is not None else None

    by_task: dict[str, tuple[float, int]] = {}
    tasks = (value.get("rating") or {}).get("by_task") if isinstance(value.get("rating"), dict) else None
    for task in tasks if isinstance(tasks, dict) else {}:
        found = score("rating", "by_task", str(task))
        if found is not None:
            by_task[str(task)] = found
    return Measured(
        latency_p50_ms=number("latency_ms", "p50"), latency_p95_ms=number("latency_ms", "p95"),
        ttft_p50_ms=number("ttft_ms", "p50"), tokens_per_s=number("tokens_per_s"),
        rating=score("rating"), rating_by_task=tuple((t, m, n) for t, (m, n) in by_task.items()), raw=value,
    )
