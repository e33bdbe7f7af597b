"""Adaptive per-model concurrency: find the runtime's knee and keep the limit there.

No fixed number fits: a small model on 2 cores gains 1.3-1.7x throughput from running requests side by
side, while a real model on the same cores may run 4 concurrent requests 22% slower than one at a time
(Foundry Local issue #637). So the limit is found by measuring, per model: a hill climb on throughput,
in the spirit of Netflix's concurrency-limits and Envoy's adaptive concurrency, adapted to LLM calls
whose latency is dominated by how many tokens they produce.

- Work is counted in **units** (output tokens when the upstream reports usage, else requests), and
  latency as **seconds per unit**, so long and short answers compare.
- The controller measures in **windows**: ``max(min_samples, 4 × limit)`` completions admitted at the
  current limit while it was binding (requests were waiting). A window at a limit nobody reached says
  nothing about the runtime and changes nothing.
- After each window it compares the throughput at this limit with the one just below: clearly more
  (> ``gain``) → one higher; otherwise → one lower, since the lower limit gives as much with less latency
  per request (past the knee, more in flight only adds latency). With nothing measured below yet, it goes
  down to measure it. So the limit keeps probing the knee from both sides — it settles oscillating
  between the knee and one above — and follows a runtime that gets faster or slower.
- Estimates per limit are smoothed (EMA) and refreshed whenever the controller passes by, so an old
  measurement under other conditions does not pin it.

Pure: no I/O and no clock of its own (the caller passes times), so it is tested against a simulated
runtime in virtual time (tests/test_concurrency.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Level:
    """Smoothed measurements at one limit value."""

    throughput: float  # units per second
    latency: float  # seconds per unit


@dataclass(slots=True)
class _Window:
    started: float = -1.0
    count: int = 0
    units: float = 0.0
    busy: float = 0.0  # summed service seconds
    binding: int = 0  # completions that found requests waiting


@dataclass
class AdaptiveLimit:
    minimum: int = 1
    maximum: int = 32
    initial: int = 2
    min_samples: int = 16
    gain: float = 0.05
    smoothing: float = 0.5
    limit: int = field(init=False)
    decisions: list[str] = field(init=False, default_factory=list, repr=False)  # last few, for /admin/status
    _levels: dict[int, _Level] = field(init=False, default_factory=dict, repr=False)
    _window: _Window = field(init=False, default_factory=_Window, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"concurrency bounds must satisfy 1 ≤ min ≤ max, got {self.minimum}..{self.maximum}")
        self.limit = min(self.maximum, max(self.minimum, self.initial))

    def completed(self, now: float, service: float, units: float, limit: int, waiting: bool) -> bool:
        """One request admitted at ``limit`` finished ``units`` of work in ``service`` seconds; ``waiting``:
        other requests were queued for this model when it finished. Returns True when the limit changed."""
        if limit != self.limit or service <= 0:
            return False  # admitted under another limit: it measures that one, not this
        window = self._window
        if window.started < 0:
            window.started = now - service
        window.count += 1
        window.units += max(units, 1.0)
        window.busy += service
        window.binding += waiting
        if window.count < max(self.min_samples, 4 * self.limit):
            return False
        self._window = _Window(started=now)
        if window.binding * 2 < window.count:
            return False  # the limit was not what held requests back: no evidence either way
        elapsed = max(now - window.started, 1e-9)
        return self._decide(_Level(throughput=window.units / elapsed, latency=window.busy / window.units))

    def _decide(self, measured: _Level) -> bool:
        here = self._levels.get(self.limit)
        if here is None:
            here = self._levels[self.limit] = measured
        else:
            a = self.smoothing
            here.throughput = a * measured.throughput + (1 - a) * here.throughput
            here.latency = a * measured.latency + (1 - a) * here.latency
        below = self._levels.get(self.limit - 1)
        if below is None:
            if self.limit > self.minimum:
                return self._move(-1, "nothing measured one lower yet")
            return self._move(+1, "at the minimum: try one more")
        change = here.throughput / below.throughput - 1
        if change > self.gain:
            return self._move(+1, f"throughput {change:+.0%} over limit {self.limit - 1}")
        return self._move(-1, f"throughput {change:+.0%} over limit {self.limit - 1}: no gain for the latency")

    def levels(self) -> dict[int, tuple[float, float]]:
        """Measured throughput (units/s) and latency (s/unit) per limit, for status pages."""
        return {limit: (level.throughput, level.latency) for limit, level in sorted(self._levels.items())}

    def _move(self, step: int, why: str) -> bool:
        new = min(self.maximum, max(self.minimum, self.limit + step))
        self.decisions = [*self.decisions[-4:], f"{self.limit}→{new}: {why}"]
        if new == self.limit:
            return False
        self.limit = new
        self._window = _Window()
        return True
