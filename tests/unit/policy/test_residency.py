"""Grouping requests by model when models cannot co-reside (no swap thrash), on its own, in virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import Set

from app.policy.residency import Residency

RAM = {"a": 6.0, "b": 6.0, "small": 1.0}


def fits(models: Set[str], budget: float = 9.0) -> bool:
    return sum(RAM[m] for m in models) <= budget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_running_group_keeps_its_turn_for_the_hold_then_the_waiting_group_goes() -> None:
    async def scenario() -> None:
        clock = Clock()
        residency = Residency(fits, hold=10.0, linger=0, clock=clock)
        await residency.enter("a")
        b = asyncio.ensure_future(residency.enter("b"))
        await settle()
        assert not b.done() and residency.running() == {"a"}
        await residency.enter("a")  # within a's hold: joins its group at once (AABB, not ABAB)
        clock.now = 11.0
        late_a = asyncio.ensure_future(residency.enter("a"))  # the hold is over: it queues behind b
        await settle()
        assert not late_a.done()
        residency.leave("a")
        residency.leave("a")  # a drained: b's turn
        await settle()
        assert b.done() and not late_a.done() and residency.running() == {"b"}
        residency.leave("b")
        await settle()
        assert late_a.done() and residency.running() == {"a"}
        assert residency.turns == 3  # a, b, a

    asyncio.run(scenario())


def test_hold_zero_is_plain_alternation() -> None:
    async def scenario() -> None:
        residency = Residency(fits, hold=0.0, linger=0, clock=Clock())
        await residency.enter("a")
        b = asyncio.ensure_future(residency.enter("b"))
        await settle()
        second_a = asyncio.ensure_future(residency.enter("a"))  # another group waits: no joining
        await settle()
        assert not second_a.done()
        residency.leave("a")
        await settle()
        assert b.done() and not second_a.done()

    asyncio.run(scenario())


def test_models_that_fit_together_run_together_unless_a_group_waits() -> None:
    async def scenario() -> None:
        residency = Residency(fits, hold=10.0, linger=0, clock=Clock())
        await residency.enter("a")
        await residency.enter("small")  # 6 + 1 fits: runs alongside
        assert residency.running() == {"a", "small"}
        b = asyncio.ensure_future(residency.enter("b"))
        await settle()
        residency.leave("small")
        newcomer = asyncio.ensure_future(residency.enter("small"))  # fits, but b waits: it queues behind b
        await settle()
        assert not newcomer.done()
        residency.leave("a")
        await settle()
        assert b.done() and newcomer.done()  # b (6) then small (1) fit together
        assert residency.running() == {"b", "small"}

    asyncio.run(scenario())


def test_a_waiter_that_leaves_takes_nothing_with_it() -> None:
    async def scenario() -> None:
        residency = Residency(fits, hold=10.0, linger=0, clock=Clock())
        await residency.enter("a")
        b = asyncio.ensure_future(residency.enter("b"))
        await settle()
        b.cancel()
        await settle()
        assert residency.waiting == {}
        await residency.enter("a")  # nobody waits any more: a's group takes new requests again
        residency.leave("a")
        residency.leave("a")
        assert residency.running() == set()
        # admitted in the same iteration as cancelled: the place is given back
        await residency.enter("a")
        c = asyncio.ensure_future(residency.enter("b"))
        await settle()
        residency.leave("a")  # admits c…
        c.cancel()  # …which is cancelled before it runs
        await settle()
        assert residency.running() == set() and residency.waiting == {}

    asyncio.run(scenario())


def test_a_group_lingers_between_back_to_back_requests() -> None:
    """A closed-loop client is milliseconds from its next request when one ends: the turn stays open for the
    linger, so its next request joins instead of costing a swap; then the waiting group goes."""

    async def scenario() -> None:
        residency = Residency(fits, hold=10.0, linger=0.05, clock=Clock())
        await residency.enter("a")
        b = asyncio.ensure_future(residency.enter("b"))
        await settle()
        residency.leave("a")  # a's only request ended while b waits…
        assert residency.running() == {"a"}
        assert await residency.enter("a") == 0.0  # …and its client's next one joins at once
        residency.leave("a")
        await asyncio.wait_for(b, 1.0)  # nothing more for a within the linger: b's turn
        assert residency.running() == {"b"}

    asyncio.run(scenario())


def test_a_group_that_can_never_fit_is_refused_and_holds_nobody() -> None:
    """'huge' never fits (the pinned models that stay loaded leave too little): refused at once, and 'small',
    which fits, is not held behind it."""
    from app.core.errors import GatewayError

    async def scenario() -> None:
        residency = Residency(lambda models: "huge" not in models and fits(models), hold=10.0, linger=0,
                              clock=Clock())
        await residency.enter("a")
        try:
            await residency.enter("huge")
        except GatewayError as err:
            assert err.status == 503 and "huge" in err.message
        else:
            raise AssertionError("a model that can never fit was let in line")
        small = asyncio.ensure_future(residency.enter("small"))
        await settle()
        assert small.done() and residency.running() == {"a", "small"}

    asyncio.run(scenario())
