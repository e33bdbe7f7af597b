"""Bounded, fair admission: at most ``limit`` requests in flight, short queues by priority class, then 429.

Foundry Local on CPU runs concurrent requests slower past a knee, so per-model concurrency is bounded
(adaptively: app/concurrency.py) and excess requests wait. Queues are bounded in length and in time, so
overload turns into a prompt 429 with ``Retry-After`` instead of unbounded memory growth:

- two classes, ``interactive`` (the default) and ``batch`` (``X-Priority: batch``), each FIFO;
- a freed slot goes to the class head that has waited longest, counting an interactive request as if it
  had waited ``aging`` seconds more: batch work yields to interactive work, but only for so long, so it
  never starves;
- a request is refused at once when its queue is full, or when the wait it can expect — the requests
  ahead of it over the limit, times the recent service time — is over the queue timeout.

A queued request waits on a future that exactly one of two things completes: ``release()`` handing it
the slot, or its queue timer expiring it. Both run on the event loop, so whichever comes first wins
and the other sees a finished future and moves on: a slot handed over in the same loop iteration as
the timeout fires is never lost (the race a task-cancelling ``asyncio.timeout`` had).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from app.core.errors import GatewayError

PRIORITIES = ("interactive", "batch")


class _Expired(Exception):
    """Set on a waiter whose queue time ran out."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_Expired())


class Limiter:
    __slots__ = ("_queues", "_service", "aging", "in_flight", "limit", "name", "queue_size", "timeout")

    def __init__(self, name: str, limit: int, queue_size: int, timeout: float, aging: float = 10.0) -> None:
        self.name = name
        self.limit = limit
        self.queue_size = queue_size
        self.timeout = timeout
        self.aging = aging
        self.in_flight = 0
        self._queues: dict[str, deque[tuple[float, asyncio.Future[None]]]] = {p: deque() for p in PRIORITIES}
        self._service = 0.0  # recent seconds per request (EMA), for the expected wait

    @property
    def queued(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def queued_by_priority(self) -> dict[str, int]:
        return {priority: len(queue) for priority, queue in self._queues.items()}

    def _reject(self, why: str) -> GatewayError:
        retry = max(1, round(min(self.timeout, self.expected_wait(self.queued) or self.timeout) / 4))
        return GatewayError(
            429, f"Too many requests for {self.name}: {why}. Retry in about {retry}s.",
            code="overloaded", headers={"retry-after": str(retry)},
        )

    def expected_wait(self, ahead: int) -> float:
        """Seconds a request with ``ahead`` requests queued before it can expect to wait (0 if unknown)."""
        return (ahead + 1) / max(1, self.limit) * self._service

    def observe(self, service: float) -> None:
        """A request that held a slot for ``service`` seconds finished (feeds the expected wait)."""
        self._service = service if not self._service else 0.8 * self._service + 0.2 * service

    async def acquire(self, priority: str = "interactive") -> float:
        """Take a slot, waiting in its class's FIFO order; returns the seconds spent queued."""
        if self.in_flight < self.limit and not self.queued:
            self.in_flight += 1
            return 0.0
        queue = self._queues[priority]
        waiting = self.queued
        if waiting >= self.queue_size:
            raise self._reject(f"{self.in_flight} in flight and {waiting} queued")
        ahead = len(self._queues["interactive"]) if priority == "interactive" else waiting
        expected = self.expected_wait(ahead)
        if expected > self.timeout:
            raise self._reject(f"the expected wait ({expected:.0f}s for {ahead} ahead) is over {self.timeout:g}s")
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (started, waiter)
        queue.append(entry)
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
                queue.remove(entry)
        return loop.time() - started

    def release(self) -> None:
        """Hand the slot to the next live waiter, or free it."""
        if self.in_flight <= self.limit and self._hand_over():
            return  # the slot moves to the waiter: in_flight stays
        self.in_flight -= 1

    def set_limit(self, limit: int) -> None:
        """Change the limit; a higher one admits waiters now, a lower one drains as requests end."""
        self.limit = limit
        while self.in_flight < self.limit and self._hand_over():
            self.in_flight += 1

    def _hand_over(self) -> bool:
        """Give a slot to the waiter that has waited longest (interactive ones counted ``aging`` longer)."""
        interactive, batch = self._queues["interactive"], self._queues["batch"]
        while interactive or batch:
            if interactive and (not batch or interactive[0][0] - self.aging <= batch[0][0]):
                _, waiter = interactive.popleft()
            else:
                _, waiter = batch.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False
