"""Circuit breaker per model: after N consecutive failures a model is skipped for a cool-down.

When the cool-down ends the model is routable again; its next request is the probe. A success closes
the breaker, a failure opens it for another cool-down.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    def __init__(
        self, failures: int, cooldown: float, on_change: Callable[[str, bool], None] | None = None
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.on_change = on_change
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def cooling(self) -> frozenset[str]:
        """Models to skip now."""
        if not self._open_until:
            return frozenset()
        now = time.monotonic()
        for name, until in list(self._open_until.items()):
            if until <= now:
                del self._open_until[name]
                if self.on_change:
                    self.on_change(name, False)
        return frozenset(self._open_until)

    def success(self, model: str) -> None:
        if self._failures.get(model):
            self._failures[model] = 0

    def failure(self, model: str) -> bool:
        """Count a failure; returns True when it opened the breaker."""
        count = self._failures.get(model, 0) + 1
        self._failures[model] = count
        if count >= self.threshold:
            self._failures[model] = 0
            self._open_until[model] = time.monotonic() + self.cooldown
            if self.on_change:
                self.on_change(model, True)
            return True
        return False
