"""One task's timer for a due time that keeps moving: ``asyncio.timeout`` without its cost on the hot path.

An attempt bounds its first byte, then each gap of the answer (the idle timeout), and all of it by the request's
deadline — one due time that moves on every chunk. ``asyncio.Timeout`` re-arms an event-loop timer on every
move (a cancel and a ``call_at``) and costs a coroutine and ``current_task()`` per block. Here moving the due time
later is a float store: the armed handle, when it fires early, re-arms itself at the current due time; only a
move earlier re-arms at once. Entering and leaving a block are plain method calls, so one timer serves the
attempt's phases one after the other (``with timer:`` per phase). Expiry cancels the task; the block it expired
in raises ``TimeoutError`` instead of ``CancelledError``, exactly as ``asyncio.timeout`` does (the task's
cancel count is kept, so a cancellation from elsewhere still wins).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

_EARLY = 0.001  # an event loop may run a timer up to its clock's resolution early: that is due, not moved


class Timer:
    __slots__ = ("_armed_at", "_cancelling", "_handle", "_task", "due", "expired", "loop")

    def __init__(self, task: asyncio.Task[object], due: float) -> None:
        self.loop = task.get_loop()
        self._task = task
        self.due = due
        self.expired = False
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._cancelling = 0

    def reschedule(self, due: float) -> None:
        """Expire at ``due`` (event-loop time) instead."""
        self.due = due
        if self._handle is not None and due < self._armed_at:
            self._handle.cancel()
            self._arm()

    def __enter__(self) -> Timer:
        self.expired = False
        self._cancelling = self._task.cancelling()
        self._arm()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _traceback: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired and self._task.uncancel() <= self._cancelling and kind is not None \
                and issubclass(kind, asyncio.CancelledError):
            raise TimeoutError from error

    def _arm(self) -> None:
        self._armed_at = self.due
        self._handle = self.loop.call_at(self.due, self._fire)

    def _fire(self) -> None:
        if self.loop.time() < self.due - _EARLY:  # moved later since it was armed: wait on
            self._arm()
            return
        self._handle = None
        self.expired = True
        self._task.cancel()
