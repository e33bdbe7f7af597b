"""Identical requests in flight share one generation (coalescing), each client served at its own pace.

The first request with a cache key leads: it runs the ordinary pipeline, and every ASGI message it sends is
recorded in its :class:`Flight` instead of being sent to its client directly. Each client — the leader's own and
every follower's — is a :class:`Listener` with a task of its own that sends it the recorded messages, from the
first, as fast as that client reads. So the generation goes at the upstream's pace whoever stops reading: a
client that reads nothing for ``idle_timeout`` seconds is let go, alone. While the whole answer is recorded (up to
``replay_limit`` bytes: what late joiners and the cache need) a slow client pins no extra memory; past it, the
messages every listener has are dropped, nobody new may join, and a client more than ``BUFFER`` bytes behind is
let go — so a flight holds ``replay_limit`` + ``BUFFER`` at most. A client that leaves stops only its own copy;
when nobody listens any more the generation stops. If the leader fails before any content, followers do not all
retry: the first to look again leads a new flight and the others follow that one.

A flight nobody can join (``shared=False``: a stored response, or one generated beside another) records for the
cache and sends to its client directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
BUFFER = 4 << 20  # bytes a client may fall behind the generation once it is past its replay limit


class Listener:
    """One client of a flight: where it is, and the task that sends it what it has not had yet."""

    __slots__ = ("complete", "position", "received", "task")

    def __init__(self) -> None:
        self.position = 0  # the index of the next message it gets
        self.received = 0  # body bytes sent to it
        self.complete = False  # it got the last message
        self.task: asyncio.Task[None] | None = None


class Flight:
    __slots__ = ("_own", "_waiters", "base", "bytes", "done", "generated", "idle_timeout", "leader", "listeners",
                 "messages", "replay_limit", "replayable", "shared", "usage")

    def __init__(self, *, shared: bool = True, idle_timeout: float = 60.0, replay_limit: int = 16 << 20) -> None:
        self.messages: list[Message] = []  # from index ``base`` on (earlier ones dropped: everyone had them)
        self.base = 0
        self.bytes = 0  # body bytes generated so far
        self.replayable = True  # every message is still recorded: others may join, the cache may keep it
        self.done = False
        self.generated = False  # the answer's last message is recorded: nothing is left to stop
        self.shared = shared
        self.idle_timeout = idle_timeout
        self.replay_limit = replay_limit
        self.listeners: list[Listener] = []
        self.leader: asyncio.Task[Any] | None = asyncio.current_task()
        self.usage: dict[str, Any] | None = None  # the answer's usage, once it is known
        self._own: Listener | None = None  # the leader's client
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def followers(self) -> int:
        return len(self.listeners) - (self._own in self.listeners)

    def tee(self, send: Send) -> Send:
        """The leader's ``send``: every message recorded, and delivered to its client by a listener of its own
        (directly, when nobody can join)."""
        if not self.shared:
            async def record_and_send(message: Message) -> None:
                self._record(message)
                await send(message)

            return record_and_send
        self._own = self.listen(send)  # nothing is recorded yet: never None

        async def record(message: Message) -> None:
            if self.done:  # after the flight (an error the proxy itself tells): straight to the client
                await send(message)
                return
            self._record(message)

        return record

    def listen(self, send: Send, first: Callable[[Message], Message] | None = None) -> Listener | None:
        """A client that gets every message from the first (``first``: what its first message becomes); None when
        the first messages are gone (past the replay limit): it must generate its own."""
        if not self.replayable:
            return None
        listener = Listener()
        self.listeners.append(listener)
        listener.task = asyncio.ensure_future(self._deliver(listener, send, first))
        listener.task.add_done_callback(lambda _: self.leave(listener))  # done, let go, or cancelled: it left
        return listener

    async def delivered(self, listener: Listener) -> bool:
        """Wait until ``listener`` had everything (True) or was let go (False: it stopped reading, or left)."""
        if listener.task is not None:
            await asyncio.wait({listener.task})
        self.leave(listener)
        return listener.complete

    def client_left(self) -> bool:
        """The leader's client went away: its copy stops, and the generation too if nobody else listens. False:
        this flight has no listeners (nobody can join it): the caller stops the generation itself."""
        if self._own is None:
            return False
        self.leave(self._own)
        return True

    def leave(self, listener: Listener) -> None:
        """A client is done or gone. With nobody left listening before the end, the generation stops."""
        if listener not in self.listeners:
            return
        self.listeners.remove(listener)
        if listener.task is not None and not listener.task.done():
            listener.task.cancel()
        if not self.listeners and not listener.complete and not self.generated and not self.done and \
                self.leader is not None:
            self.leader.cancel()

    async def ended(self) -> None:
        """Wait for the leader to close the flight (its usage is known then)."""
        await self.message(1 << 62)

    @property
    def own(self) -> Listener | None:
        """The leader's client's listener (None: nobody can join, its client is sent to directly)."""
        return self._own

    def finish(self) -> None:
        self.done = True
        self._wake()

    @property
    def failed_before_content(self) -> bool:
        """Ended with no answer at all, or with an error answer (nothing worth sharing: a follower retries)."""
        return self.done and (not self.messages or (not self.base and self.messages[0].get("status", 500) >= 400))

    async def message(self, index: int) -> Message | None:
        """The ``index``-th message, once it is sent (None: the flight ended before it)."""
        while index >= self.base + len(self.messages) and not self.done:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        at = index - self.base
        return self.messages[at] if 0 <= at < len(self.messages) else None

    # --- inside -----------------------------------------------------------------------------------------------

    def _record(self, message: Message) -> None:
        self.messages.append(message)
        if message.get("type") == "http.response.body" and not message.get("more_body", False):
            self.generated = True  # the leader goes on to keep it (cache, stored response): never cancelled now
        self.bytes += len(message.get("body", b""))
        if self._waiters:
            self._wake()
        if self.replayable and self.bytes > self.replay_limit:
            self.replayable = False  # from now on nobody joins and nothing is kept: memory only for the slowest
        if not self.replayable:
            for listener in [x for x in self.listeners if self.bytes - x.received > BUFFER]:
                self.leave(listener)  # too far behind: let go, alone
            lowest = min((x.position for x in self.listeners), default=self.base + len(self.messages))
            if lowest > self.base:
                del self.messages[:lowest - self.base]
                self.base = lowest

    async def _deliver(self, listener: Listener, send: Send, first: Callable[[Message], Message] | None) -> None:
        while (message := await self.message(listener.position)) is not None:
            if listener.position == 0 and first is not None:
                message = first(message)
            try:
                async with asyncio.timeout(self.idle_timeout):  # a client that reads nothing is let go
                    await send(message)
            except TimeoutError:
                return
            listener.position += 1
            listener.received += len(message.get("body", b""))
            if not message.get("more_body", False) and message.get("type") == "http.response.body":
                listener.complete = True
                return

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
