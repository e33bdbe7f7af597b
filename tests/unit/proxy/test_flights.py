"""A generation shared by identical requests: every client gets every message in order whenever it joins, each at
its own pace — one that stops reading is let go alone and never holds the generation or the others (finding 6 of
issue 31); a leader whose client left goes on while followers listen and stops when nobody does; past the replay
limit memory holds only what the slowest client still needs; a failure before content is told apart from an
answer."""

from __future__ import annotations

import asyncio
from typing import Any

from app.proxy import flights
from app.proxy.flights import Flight


def _body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


START = {"type": "http.response.start", "status": 200, "headers": []}


def _collector() -> tuple[list[dict[str, Any]], Any]:
    got: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        got.append(message)

    return got, send


def test_early_and_late_followers_get_every_message_in_order() -> None:
    async def run() -> None:
        flight = Flight()
        to_client, client = _collector()
        record = flight.tee(client)
        early, early_send = _collector()
        first = flight.listen(early_send)
        await record(START)
        await record(_body(b"a"))
        late, late_send = _collector()
        second = flight.listen(late_send, first=lambda m: {**m, "headers": [(b"x", b"late")]})
        await record(_body(b"b", more=False))
        flight.finish()
        assert await flight.delivered(first) and await flight.delivered(second)
        assert flight.own is not None and await flight.delivered(flight.own)
        expected = [START, _body(b"a"), _body(b"b", more=False)]
        assert early == expected and to_client == expected
        assert late == [{**START, "headers": [(b"x", b"late")]}, *expected[1:]]
        assert not flight.failed_before_content

    asyncio.run(run())


def test_a_client_that_stops_reading_is_let_go_alone() -> None:
    """The leader's client reads nothing: the generation goes on at its own pace, the follower gets all of it,
    and the stuck client is let go after the idle timeout."""
    async def run() -> None:
        flight = Flight(idle_timeout=0.2)
        stuck = asyncio.Event()

        async def never_reads(message: dict[str, Any]) -> None:
            if message.get("body"):
                stuck.set()
                await asyncio.Event().wait()  # a socket whose buffers are full

        record = flight.tee(never_reads)
        follower, follower_send = _collector()
        listener = flight.listen(follower_send)
        await record(START)
        for _ in range(100):
            await record(_body(b"x" * 1000))  # never waits for any client
        await record(_body(b"", more=False))
        flight.finish()
        assert await flight.delivered(listener) and len(follower) == 102
        await stuck.wait()
        assert flight.own is not None and not await flight.delivered(flight.own)  # let go, alone

    asyncio.run(run())


def test_the_generation_goes_on_while_anyone_listens_and_stops_when_nobody_does() -> None:
    async def run() -> None:
        released = asyncio.Event()
        started = asyncio.Event()
        holder: list[Flight] = []

        async def leader() -> None:
            holder.append(Flight())
            started.set()
            await released.wait()

        task = asyncio.ensure_future(leader())
        await started.wait()
        flight = holder[0]
        _, client = _collector()
        flight.tee(client)
        _, follower_send = _collector()
        follower = flight.listen(follower_send)
        assert flight.client_left() and flight.followers == 1
        await asyncio.sleep(0)
        assert not task.done()  # the follower still listens
        flight.leave(follower)
        await asyncio.sleep(0)
        assert task.cancelled()

    asyncio.run(run())


def test_past_the_replay_limit_memory_holds_only_what_the_slowest_needs(monkeypatch: Any) -> None:
    monkeypatch.setattr(flights, "BUFFER", 10_000)

    async def run() -> None:
        flight = Flight(replay_limit=5_000, idle_timeout=30)
        _, client = _collector()
        record = flight.tee(client)
        hold = asyncio.Event()

        async def slow(message: dict[str, Any]) -> None:
            await hold.wait()

        lagging = flight.listen(slow)
        await record(START)
        for _ in range(30):
            await record(_body(b"x" * 1000))
            await asyncio.sleep(0)
        assert not flight.replayable
        assert lagging not in flight.listeners  # more than BUFFER behind: let go
        assert flight.base > 0 and len(flight.messages) < 5  # only what the leader's client has not had
        await record(_body(b"", more=False))
        flight.finish()
        assert flight.own is not None and await flight.delivered(flight.own)

    asyncio.run(run())


def test_failure_before_content() -> None:
    async def run() -> None:
        nothing = Flight()
        nothing.finish()
        assert nothing.failed_before_content and await nothing.message(0) is None
        error = Flight(shared=False)
        _, client = _collector()
        await error.tee(client)({**START, "status": 400})
        assert not error.failed_before_content  # not finished yet
        error.finish()
        assert error.failed_before_content

    asyncio.run(run())


def test_a_follower_let_go_after_the_answer_never_stops_the_leader_keeping_it() -> None:
    """Review of issue 31: the last message is recorded, the leader goes on to keep the answer; a follower that
    stopped reading and is let go then must not cancel it."""
    async def run() -> None:
        finished = asyncio.Event()
        holder: list[Flight] = []

        async def leader() -> None:
            flight = Flight(idle_timeout=0.1)
            holder.append(flight)
            record = flight.tee(_collector()[1])

            async def stuck(message: dict[str, Any]) -> None:
                await asyncio.Event().wait()

            listener = flight.listen(stuck)
            await record(START)
            await record(_body(b"all of it", more=False))
            assert listener is not None
            await flight.delivered(listener)  # the stuck follower is let go meanwhile
            finished.set()  # the leader is still here, keeping the answer

        task = asyncio.ensure_future(leader())
        await asyncio.wait({task}, timeout=5)
        assert task.done() and not task.cancelled() and finished.is_set()

    asyncio.run(run())


def test_past_its_replay_limit_a_flight_takes_no_new_listener() -> None:
    async def run() -> None:
        flight = Flight(replay_limit=10)
        record = flight.tee(_collector()[1])
        await record(START)
        await record(_body(b"x" * 100))
        await asyncio.sleep(0)
        assert not flight.replayable and flight.listen(_collector()[1]) is None

    asyncio.run(run())
