"""uvicorn's HTTP protocol (httptools) with two guards it lacks: a connection must send a request's headers within
``GATEWAY_HEADER_TIMEOUT`` (else it is closed), and a worker keeps at most ``GATEWAY_MAX_UNAUTHENTICATED_CONNECTIONS``
connections that have not sent a request with a valid key — still sending headers, or idle — closing the oldest of
them to make room. So sockets that trickle headers or sit idle, which need no key, cannot use up the process's file
descriptors and take ``/healthz`` and every client down with them. A connection is counted out once one of its
requests passed authentication (``app.access.middleware`` calls :meth:`GuardedProtocol.authenticated`).

A request answered before its body was read (a 413 at the limit, a 401) has the rest of its body read and
dropped — up to ``LINGER_BYTES`` or ``LINGER_SECONDS``, then the connection is closed — so the client, which is
still sending, gets the answer instead of a reset (a lingering close, as nginx does)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.access.middleware import CONNECTION_KEY

LINGER_BYTES = 16 << 20  # of a refused body read and dropped before the connection is closed
LINGER_SECONDS = 5.0


class GuardedProtocol(HttpToolsProtocol):
    header_timeout: ClassVar[float] = 10.0
    most_unauthenticated: ClassVar[int] = 256
    waiting: ClassVar[dict[GuardedProtocol, None]] = {}  # connections with no authenticated request, oldest first

    @classmethod
    def configure(cls, header_timeout: float, most_unauthenticated: int) -> None:
        """This process's limits (every worker builds its app, and calls this, before it serves)."""
        cls.header_timeout = header_timeout
        cls.most_unauthenticated = max(1, min(most_unauthenticated, _open_file_limit() // 4))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._trusted = False
        self._dropped = 0  # bytes of a refused body read and dropped
        self._linger: asyncio.TimerHandle | None = None
        self._arm()
        waiting = GuardedProtocol.waiting
        waiting[self] = None
        while len(waiting) > self.most_unauthenticated:
            next(iter(waiting)).evict()

    def connection_lost(self, exc: Exception | None) -> None:
        GuardedProtocol.waiting.pop(self, None)
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body:  # the rest of a refused body
            self._dropped += len(data)
            if self._linger is None:
                self._linger = self.loop.call_later(LINGER_SECONDS, self.evict)
            if self._dropped > LINGER_BYTES:
                self.evict()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()
        self._dropped = 0
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def on_headers_complete(self) -> None:
        self._disarm()
        self.scope[CONNECTION_KEY] = self  # type: ignore[literal-required]
        super().on_headers_complete()

    def authenticated(self) -> None:
        """A request of this connection passed authentication: it is a client's, no longer counted."""
        if not self._trusted:
            self._trusted = True
            GuardedProtocol.waiting.pop(self, None)

    def evict(self) -> None:
        GuardedProtocol.waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def _open_file_limit() -> int:
    if sys.platform == "win32":
        return 8192
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft > 0:
            return int(soft)
    return 1024
