"""Bounded, fair admission: at most ``limit`` requests in flight, a short FIFO queue, then 429.

Foundry Local on CPU runs concurrent requests slower than sequential ones, so per-model concurrency is
small and excess requests wait their turn in arrival order. The queue is bounded in length and time,
so overload turns into a prompt 429 with ``Retry-After`` instead of unbounded memory growth.

A queued request waits on a future that exactly one of two things completes: ``release()`` handing it
the slot, or its queue timer expiring it. Both run on the event loop, so whichever comes first wins
and the other sees a finished future and moves on: a slot handed over in the same loop iteration as
the timeout fires is never lost (the race a task-cancelling ``asyncio.timeout`` had).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from app.errors import GatewayError


class _Expired(Exception):
    """Set on a waiter whose queue time ran out."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_Expired())


class Limiter:
    __slots__ = ("_waiters", "in_flight", "limit", "name", "queue_size", "timeout")

    def __init__(self, name: str, limit: int, queue_size: int, timeout: float) -> None:
        self.name = name
        self.limit = limit
        self.queue_size = queue_size
        self.timeout = timeout
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _reject(self, why: str) -> GatewayError:
        retry = max(1, round(self.timeout / 4))
        return GatewayError(
            429, f"Too many requests for {self.name}: {why}. Retry in about {retry}s.",
            code="overloaded", headers={"retry-after": str(retry)},
        )

    async def acquire(self) -> float:
        """Take a slot, waiting in FIFO order; returns the seconds spent queued."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return 0.0
        if len(self._waiters) >= self.queue_size:
            raise self._reject(f"{self.in_flight} in flight and {len(self._waiters)} queued")
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        expiry = loop.call_later(self.timeout, _expire, waiter)
        try:
            await waiter
        except _Expired:
            raise self._reject(f"waited {self.timeout:g}s in the queue") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            raise
        finally:
            expiry.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return loop.time() - started

    def release(self) -> None:
        """Hand the slot to the oldest live waiter, or free it."""
        if self.in_flight <= self.limit:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot moves to the waiter: in_flight stays
                    return
        self.in_flight -= 1

    def set_limit(self, limit: int) -> None:
        """Change the limit; a higher one admits waiters now, a lower one drains as requests end."""
        self.limit = limit
        while self.in_flight < self.limit and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.in_flight += 1
