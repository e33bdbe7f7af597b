"""uvicorn's HTTP protocol (httptools) with the guards it lacks, for every route:

- a connection must send a request's headers within ``GATEWAY_HEADER_TIMEOUT`` (else it is closed), and each piece
  of a body within ``GATEWAY_BODY_TIMEOUT`` (else a 408 and the connection closed);
- a worker keeps at most ``GATEWAY_MAX_UNAUTHENTICATED_CONNECTIONS`` connections that have not sent a request with
  a valid key — still sending headers, or idle — closing the oldest of them to make room, so sockets that trickle
  headers or sit idle, which need no key, cannot use up the process's file descriptors and take ``/healthz`` and
  every client down with them. A connection is counted out once one of its requests passed authentication
  (``app.access.middleware`` calls :meth:`GuardedProtocol.authenticated`);
- a request answered before its body was read (a 413 at the limit, a 401) has the rest of its body read and
  dropped — up to ``LINGER_BYTES`` or ``LINGER_SECONDS``, then the connection is closed — so the client, which is
  still sending, gets the answer instead of a reset (a lingering close, as nginx does).

The deadlines cost a clock read and a dict entry per phase, not a timer per request: one watchdog a second, per
process, closes what is past its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.access.middleware import CONNECTION_KEY
from app.core.errors import request_timeout

LINGER_BYTES = 16 << 20  # of a refused body read and dropped before the connection is closed
LINGER_SECONDS = 5.0
WATCH_EVERY = 1.0  # seconds between the watchdog's looks


class GuardedProtocol(HttpToolsProtocol):
    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    most_unauthenticated: ClassVar[int] = 256
    waiting: ClassVar[dict[GuardedProtocol, None]] = {}  # connections with no authenticated request, oldest first
    reading: ClassVar[dict[GuardedProtocol, float]] = {}  # connections reading headers or a body: their deadline
    _watchdog: ClassVar[asyncio.TimerHandle | None] = None

    @classmethod
    def configure(cls, header_timeout: float, body_timeout: float, most_unauthenticated: int) -> None:
        """This process's limits (every worker builds its app, and calls this, before it serves)."""
        cls.header_timeout = header_timeout
        cls.body_timeout = body_timeout
        cls.most_unauthenticated = max(1, min(most_unauthenticated, _open_file_limit() // 4))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._trusted = False
        self._in_body = False
        self._dropped = 0  # bytes of a refused body read and dropped
        self._linger_until = 0.0
        GuardedProtocol.reading[self] = self.loop.time() + self.header_timeout
        waiting = GuardedProtocol.waiting
        waiting[self] = None
        while len(waiting) > self.most_unauthenticated:
            next(iter(waiting)).evict()
        if GuardedProtocol._watchdog is None:
            GuardedProtocol._watchdog = self.loop.call_later(WATCH_EVERY, _watch, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        GuardedProtocol.waiting.pop(self, None)
        GuardedProtocol.reading.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body:  # the rest of a refused body
            self._dropped += len(data)
            if not self._linger_until:
                self._linger_until = self.loop.time() + LINGER_SECONDS
            if self._dropped > LINGER_BYTES or self.loop.time() > self._linger_until:
                self.evict()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_body = False
        self._dropped = 0
        self._linger_until = 0.0
        GuardedProtocol.reading[self] = self.loop.time() + self.header_timeout

    def on_headers_complete(self) -> None:
        self.scope[CONNECTION_KEY] = self  # type: ignore[literal-required]
        super().on_headers_complete()
        self._in_body = True
        GuardedProtocol.reading[self] = self.loop.time() + self.body_timeout

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        GuardedProtocol.reading[self] = self.loop.time() + self.body_timeout

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        GuardedProtocol.reading.pop(self, None)

    def authenticated(self) -> None:
        """A request of this connection passed authentication: it is a client's, no longer counted."""
        if not self._trusted:
            self._trusted = True
            GuardedProtocol.waiting.pop(self, None)

    def evict(self) -> None:
        GuardedProtocol.waiting.pop(self, None)
        GuardedProtocol.reading.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    def timed_out(self) -> None:
        """Past the deadline of the phase it is in: headers — closed; a body — a 408 if nothing was answered yet,
        and the request told its client left. Not while the server itself stopped reading (a body buffered past
        uvicorn's high-water mark, a request queued behind the one in progress): the client is not the slow one."""
        if self.flow.read_paused or self.pipeline:
            GuardedProtocol.reading[self] = self.loop.time() + (self.body_timeout if self._in_body else
                                                               self.header_timeout)
            return
        cycle = self.cycle
        if self._in_body and cycle is not None and not cycle.response_complete:
            if not cycle.response_started:
                err = request_timeout(self.body_timeout)
                body = err.to_bytes()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            cycle.disconnected = True
            cycle.message_event.set()
        self.evict()


def _watch(loop: asyncio.AbstractEventLoop) -> None:
    """Close the connections past their deadline; look again in a second."""
    now = loop.time()
    for connection in [c for c, deadline in GuardedProtocol.reading.items() if deadline < now]:
        connection.timed_out()
    GuardedProtocol._watchdog = loop.call_later(WATCH_EVERY, _watch, loop)


def _open_file_limit() -> int:
    if sys.platform == "win32":
        return 8192
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft > 0:
            return int(soft)
    return 1024
