"""Identical requests in flight share one generation (coalescing).

The first request with a cache key is the leader: it runs the ordinary pipeline, and every ASGI message it sends
its client is also recorded in its :class:`Flight`. Requests with the same key that arrive meanwhile follow: each
gets the messages recorded so far, then the rest as they come, at its own pace. A client that leaves stops only
its own copy: a leader whose client left keeps generating for its followers (and is cancelled only when nobody
listens any more). If the leader fails before any content, its followers do not all retry: the first to look
again leads a new flight and the others follow that one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


class Flight:
    __slots__ = ("_waiters", "done", "followers", "leader", "leader_gone", "messages", "usage")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.done = False
        self.followers = 0
        self.leader_gone = False  # the leader's client left: its generation goes on for the followers
        self.leader: asyncio.Task[Any] | None = asyncio.current_task()
        self.usage: dict[str, Any] | None = None  # the answer's usage, once it is known
        self._waiters: list[asyncio.Future[None]] = []

    def tee(self, send: Send) -> Send:
        """The leader's ``send``: every message recorded for the followers, and sent on while its client is there."""

        async def both(message: Message) -> None:
            self.messages.append(message)
            if self._waiters:
                self._wake()
            if not self.leader_gone:
                await send(message)

        return both

    def finish(self) -> None:
        self.done = True
        self._wake()

    @property
    def failed_before_content(self) -> bool:
        """Ended with no answer at all, or with an error answer (nothing worth sharing: a follower retries)."""
        return self.done and (not self.messages or self.messages[0].get("status", 500) >= 400)

    async def message(self, index: int) -> Message | None:
        """The ``index``-th message, once it is sent (None: the flight ended before it)."""
        while index >= len(self.messages) and not self.done:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return self.messages[index] if index < len(self.messages) else None

    def leave(self) -> None:
        """A follower left. With the leader's client gone too, nobody listens: the generation stops."""
        self.followers -= 1
        if self.leader_gone and self.followers <= 0 and not self.done and self.leader is not None:
            self.leader.cancel()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
