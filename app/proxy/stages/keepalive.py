"""SSE comments while a stream waits for its first event, so clients and proxies with idle timeouts of their own
keep the connection (``GATEWAY_KEEPALIVE_INTERVAL``)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.proxy.exchange import Responder


class KeepAlive:
    """A ``: keep-alive`` comment every ``interval``. A timer, not a task, until a comment is due: most streams
    start long before the first one."""

    __slots__ = ("handle", "interval", "loop", "reply", "sending")

    def __init__(self, reply: Responder, interval: float) -> None:
        self.reply = reply
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.sending: asyncio.Future[None] | None = None
        self.handle = self.loop.call_later(interval, self._due)

    def _due(self) -> None:
        if self.sending is None or self.sending.done():  # a slow client still busy with the last one: skip
            self.sending = asyncio.ensure_future(self.reply.keepalive())
            self.sending.add_done_callback(retrieve)  # a client gone is the disconnect watcher's news
        self.handle = self.loop.call_later(self.interval, self._due)

    async def stop(self) -> None:
        """No more comments; one being sent finishes first, so the stream's own bytes come after it (a client
        that takes none for a whole interval gets no more: the relay then lets it go)."""
        self.handle.cancel()
        if self.sending is not None and not self.sending.done():
            await asyncio.wait((self.sending,), timeout=self.interval)
            self.sending.cancel()


def retrieve(future: asyncio.Future[Any]) -> None:
    """A done-callback that reads a background future's exception, so none is reported as never retrieved."""
    if not future.cancelled():
        future.exception()
