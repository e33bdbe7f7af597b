"""A generation shared by identical requests: followers get every message in order whenever they join, a leader
whose client left goes on while followers listen and stops when nobody does, and a failure before content is told
apart from an answer."""

from __future__ import annotations

import asyncio
from typing import Any

from app.proxy.flights import Flight


def _body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


START = {"type": "http.response.start", "status": 200, "headers": []}


async def _follow(flight: Flight) -> list[dict[str, Any]]:
    got, index = [], 0
    while (message := await flight.message(index)) is not None:
        got.append(message)
        index += 1
    return got


def test_early_and_late_followers_get_every_message_in_order() -> None:
    async def run() -> None:
        flight = Flight()
        to_client: list[dict[str, Any]] = []

        async def client(message: dict[str, Any]) -> None:
            to_client.append(message)

        send = flight.tee(client)
        early = asyncio.ensure_future(_follow(flight))
        await send(START)
        await send(_body(b"a"))
        late = asyncio.ensure_future(_follow(flight))
        await asyncio.sleep(0)  # the late one catches up on what was sent
        await send(_body(b"b", more=False))
        flight.finish()
        expected = [START, _body(b"a"), _body(b"b", more=False)]
        assert await early == expected and await late == expected and to_client == expected
        assert not flight.failed_before_content

    asyncio.run(run())


def test_a_leader_whose_client_left_goes_on_until_the_last_follower_leaves() -> None:
    async def run() -> None:
        released = asyncio.Event()

        async def leader() -> None:
            await released.wait()

        task = asyncio.ensure_future(leader())
        await asyncio.sleep(0)
        flight = Flight()
        flight.leader = task
        flight.followers = 2
        flight.leader_gone = True
        flight.leave()
        await asyncio.sleep(0)
        assert not task.done()  # one follower still listens
        flight.leave()
        await asyncio.sleep(0)
        assert task.cancelled()

    asyncio.run(run())


def test_a_leader_with_its_client_there_is_never_cancelled_by_followers() -> None:
    async def run() -> None:
        flight = Flight()
        flight.followers = 1
        flight.leave()
        assert flight.leader is not None and not flight.leader.cancelled()

    asyncio.run(run())


def test_failure_before_content() -> None:
    async def run() -> None:
        nothing = Flight()
        nothing.finish()
        assert nothing.failed_before_content and await nothing.message(0) is None
        error = Flight()

        async def client(message: dict[str, Any]) -> None:
            return None

        await error.tee(client)({**START, "status": 400})
        assert not error.failed_before_content  # not finished yet
        error.finish()
        assert error.failed_before_content

    asyncio.run(run())
