"""``app.core.timer.Timer`` on its own: expiry as ``TimeoutError``, moving the due time either way, a cancellation
from elsewhere still a ``CancelledError``, and nothing left armed after the block."""

from __future__ import annotations

import asyncio

import pytest

from app.core.timer import Timer


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _expires(due_in: float, moves: list[float] | None = None) -> float:
    """How long after entering the block it raised ``TimeoutError`` (the block waits forever)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    start = loop.time()
    timer = Timer(task, start + due_in)
    with pytest.raises(TimeoutError), timer:
        for move in moves or []:
            timer.reschedule(start + move)
        await asyncio.Event().wait()
    assert timer.expired
    return loop.time() - start


def test_a_block_past_its_due_time_raises_timeout_error() -> None:
    took = run(_expires(0.02))
    assert isinstance(took, float) and 0.015 <= took < 1.0


def test_moving_the_due_time_later_waits_on_and_earlier_expires_sooner() -> None:
    later = run(_expires(0.01, moves=[0.08]))
    assert isinstance(later, float) and later >= 0.075  # armed at 10 ms, fired early, re-armed at the new time
    sooner = run(_expires(5.0, moves=[0.02]))
    assert isinstance(sooner, float) and sooner < 1.0


def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    async def main() -> None:
        inner_started = asyncio.Event()

        async def inner() -> None:
            task = asyncio.current_task()
            assert task is not None
            with Timer(task, asyncio.get_running_loop().time() + 5.0):
                inner_started.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(inner())
        await inner_started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_a_block_that_ends_in_time_leaves_nothing_armed_and_the_timer_serves_the_next_phase() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        timer = Timer(task, loop.time() + 0.01)
        with timer:
            pass  # done at once
        assert not timer.expired
        await asyncio.sleep(0.03)  # past the first due time: nothing fires, the task is not cancelled
        timer.reschedule(loop.time() + 0.01)
        with pytest.raises(TimeoutError), timer:  # the next phase, with its own due time
            await asyncio.Event().wait()
        assert task.cancelling() == 0

    run(main())
