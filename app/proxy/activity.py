"""Requests running now by priority class, and when interactive ones last started or ended: the signal batches
pace themselves by (``app.batches.pace``)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from app.policy.limiter import PRIORITIES


class Activity:
    __slots__ = ("_changed", "interactive_changed", "running")

    def __init__(self) -> None:
        self.running = dict.fromkeys(PRIORITIES, 0)
        self.interactive_changed = 0.0  # monotonic time an interactive request last started or ended
        self._changed: asyncio.Event | None = None

    def begin(self, priority: str) -> None:
        self.running[priority] += 1
        if priority == "interactive":
            self._touch()

    def end(self, priority: str) -> None:
        self.running[priority] -= 1
        if priority == "interactive":
            self._touch()

    @property
    def interactive(self) -> int:
        return self.running["interactive"]

    def since_interactive(self) -> float:
        return time.monotonic() - self.interactive_changed

    async def changed(self, timeout: float) -> None:
        """Until interactive traffic starts or ends, at most ``timeout`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _touch(self) -> None:
        self.interactive_changed = time.monotonic()
        if self._changed is not None:
            self._changed.set()
