"""The admission limiter on its own, in virtual time: FIFO order, bounded queue, cancellation while queued,
and the race where a slot is handed over in the same loop iteration as the waiter's queue timeout fires."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.core.errors import GatewayError
from app.policy.limiter import Limiter


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when the test moves it: timers fire exactly when told."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def run(test: Callable[[VirtualClockLoop], Awaitable[Any]]) -> Any:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(test(loop))
    finally:
        loop.close()


async def settle() -> None:
    """Let every ready callback run (a handful of loop iterations; no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_slot_handed_over_as_the_queue_timeout_fires_is_not_lost() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=1, queue_size=4, timeout=5.0)
        await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await settle()
        assert limiter.queued == 1
        # The holder releases from a timer due just before the waiter's queue timeout; moving the clock
        # past both makes them run in the same loop iteration, release first.
        loop.call_at(loop.now + 5.0 - 1e-6, limiter.release)
        loop.now += 10.0
        await settle()
        assert waiter.done()
        if waiter.exception() is None:  # it got the slot: it holds it
            assert limiter.in_flight == 1
            limiter.release()
        else:  # it timed out: the slot it was handed must be free again
            assert isinstance(waiter.exception(), GatewayError)
        assert limiter.in_flight == 0
        await limiter.acquire()  # the model is still usable
        assert limiter.in_flight == 1

    run(scenario)


def test_timeout_first_then_release_frees_the_slot() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=1, queue_size=4, timeout=5.0)
        await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await settle()
        loop.call_at(loop.now + 5.0 + 1e-6, limiter.release)
        loop.now += 10.0
        await settle()
        with pytest.raises(GatewayError) as info:
            waiter.result()
        assert info.value.status == 429 and info.value.headers["retry-after"].isdigit()
        assert limiter.in_flight == 0 and limiter.queued == 0

    run(scenario)


def test_fifo_order_and_bounded_queue() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=2, queue_size=3, timeout=30.0)
        await limiter.acquire()
        await limiter.acquire()
        order: list[int] = []

        async def queued(i: int) -> None:
            await limiter.acquire()
            order.append(i)

        tasks = [asyncio.ensure_future(queued(i)) for i in range(3)]
        await settle()
        with pytest.raises(GatewayError, match="3 queued"):
            await limiter.acquire()  # the queue is full: 429 at once
        for _ in range(3):
            limiter.release()
            await settle()
        assert order == [0, 1, 2]
        assert limiter.in_flight == 2 and limiter.queued == 0
        await asyncio.gather(*tasks)

    run(scenario)


def test_cancelled_while_queued_leaves_no_trace() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=1, queue_size=4, timeout=30.0)
        await limiter.acquire()
        first = asyncio.ensure_future(limiter.acquire())
        second = asyncio.ensure_future(limiter.acquire())
        await settle()
        first.cancel()
        await settle()
        assert first.cancelled() and limiter.queued == 1
        limiter.release()  # goes to the next live waiter, not to the cancelled one
        await settle()
        assert second.done() and limiter.in_flight == 1

    run(scenario)


def test_cancelled_just_after_being_handed_the_slot_passes_it_on() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=1, queue_size=4, timeout=30.0)
        await limiter.acquire()
        first = asyncio.ensure_future(limiter.acquire())
        second = asyncio.ensure_future(limiter.acquire())
        await settle()
        limiter.release()  # hands the slot to `first`...
        first.cancel()  # ...which is cancelled before it runs
        await settle()
        assert first.cancelled() and second.done() and second.exception() is None
        assert limiter.in_flight == 1

    run(scenario)


def test_raising_the_limit_admits_waiters() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=1, queue_size=4, timeout=30.0)
        await limiter.acquire()
        waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(2)]
        await settle()
        limiter.set_limit(3)
        await settle()
        assert all(w.done() for w in waiters) and limiter.in_flight == 3
        limiter.set_limit(1)  # lowering never revokes a slot: the excess drains as requests end
        for _ in range(3):
            limiter.release()
        assert limiter.in_flight == 0

    run(scenario)


def test_interactive_goes_before_batch_but_batch_ages_in() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=1, queue_size=8, timeout=60.0, aging=10.0)
        await limiter.acquire()
        order: list[str] = []

        async def queued(name: str, priority: str) -> None:
            await limiter.acquire(priority)
            order.append(name)

        tasks = [asyncio.ensure_future(queued("batch-1", "batch"))]
        await settle()
        loop.now += 1.0
        tasks.append(asyncio.ensure_future(queued("interactive-1", "interactive")))
        await settle()
        loop.now += 11.0  # batch-1 has now waited 12 s: more than an interactive request's 10 s head start
        tasks.append(asyncio.ensure_future(queued("interactive-2", "interactive")))
        await settle()
        assert limiter.queued_by_priority() == {"interactive": 2, "batch": 1}
        for _ in range(3):
            limiter.release()
            await settle()
        # interactive-1 came 1 s after batch-1: it goes first; interactive-2 came 12 s after: batch-1 goes first
        assert order == ["interactive-1", "batch-1", "interactive-2"]
        limiter.release()
        await asyncio.gather(*tasks)

    run(scenario)


def test_batch_never_starves_under_a_steady_interactive_stream() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=1, queue_size=64, timeout=600.0, aging=5.0)
        await limiter.acquire()
        served: list[tuple[str, float]] = []

        async def queued(name: str, priority: str) -> None:
            await limiter.acquire(priority)
            served.append((name, loop.now))

        batch = asyncio.ensure_future(queued("batch", "batch"))
        tasks = []
        for i in range(20):  # a new interactive request every second, each served in a second
            tasks.append(asyncio.ensure_future(queued(f"i{i}", "interactive")))
            await settle()
            loop.now += 1.0
            limiter.release()
            await settle()
        assert batch.done()
        served_at = dict(served)["batch"]
        assert served_at <= 1000.0 + 7.0, served  # within its ageing (5 s) plus a service or two
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(scenario)


def test_an_expected_wait_over_the_bound_is_refused_at_once() -> None:
    async def scenario(loop: VirtualClockLoop) -> None:
        limiter = Limiter("m", limit=1, queue_size=64, timeout=25.0)
        limiter.observe(10.0)  # requests hold a slot ~10 s
        await limiter.acquire()
        waiting = [asyncio.ensure_future(limiter.acquire()) for _ in range(2)]  # expected 10 s, 20 s
        await settle()
        assert limiter.queued == 2
        with pytest.raises(GatewayError) as info:
            await limiter.acquire()  # 30 s expected: over 25 s, so 429 now rather than after 25 s
        assert info.value.status == 429 and "expected wait" in info.value.message
        assert int(info.value.headers["retry-after"]) >= 1
        batch_waits_behind_everyone = limiter.expected_wait(2) > limiter.expected_wait(0)
        assert batch_waits_behind_everyone
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    run(scenario)


def test_the_global_queue_ages_batch_work_as_configured() -> None:
    """GATEWAY_BATCH_AGING holds for the gateway-wide queue too, not only the per-model ones."""
    from app.core.settings import load_settings
    from app.gateway import Gateway
    from tests.helpers import ROOT

    gw = Gateway(load_settings(batch_aging=3.5, upstream_mode="external", upstream_url="http://127.0.0.1:9",
                               registry_path=ROOT / "models.json"))
    try:
        assert gw.admission.overall.aging == 3.5
        assert gw.admission.limiter(next(iter(gw.registry))).aging == 3.5
    finally:
        asyncio.run(gw.upstream.aclose())
