"""A lean HTTP/1.1 keep-alive transport for httpx: asyncio protocols plus httptools' parser.

Why: the gateway talks to one or two upstreams, with small requests and streamed replies, on every
request. httpx's default pool (httpcore) costs several times more CPU per request; this transport does
only what that job needs (HTTP/1.1, plain or TLS; no proxies, no HTTP/2, no redirects) and measures far
cheaper (docs/performance.md). It is a regular ``httpx.AsyncBaseTransport``, so the rest of the code
keeps httpx's Request/Response API, and ``tests/test_transport.py`` holds it to the same HTTP semantics
as httpx's own transport.

Behaviour that matters for a proxy:
- body chunks are handed over as they arrive, with read back-pressure (reading pauses while more
  than ``_HIGH_WATER`` bytes wait for the consumer);
- httpx timeouts (``request.extensions["timeout"]``) are honoured at each await: pool, connect,
  write (the send buffer draining) and read (the head, and every body chunk);
- closing a response before its end closes the connection, so the upstream sees the client leave;
- a request is sent again only when it provably never left: an idle connection the server has closed
  is noticed *before* writing (as httpcore does), and after a write only idempotent methods are
  retried. A POST that met a connection closing under it is an error, never a second generation;
- no delayed-ACK stall (Linux): Foundry Local's web server writes small segments with Nagle's algorithm
  on, so on a reused connection our delayed ACK of the response head held its first event ~40 ms.
  ``TCP_QUICKACK`` is re-armed at connect and after every read (the kernel clears it by itself), and
  ``TCP_NODELAY`` is set, unless ``tcp_tuning`` is off. Where the options do not exist this is a no-op.
"""

from __future__ import annotations

import asyncio
import enum
import select
import socket
import ssl
import sys
import time
from collections import deque
from typing import Any

import httptools
import httpx

_HIGH_WATER = 256 * 1024
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})


class _State(enum.Enum):
    IDLE = "idle"  # no exchange; in the pool or just connected
    ACTIVE = "active"  # a request went out; its response is being read
    DONE = "done"  # the response is complete; reusable if keep-alive
    CLOSED = "closed"


class _NotSent(httpx.ConnectError):
    """The connection was found closed before a byte of the request went out: safe to send elsewhere."""


def _expire(waiter: asyncio.Future[None], error: type[httpx.TimeoutException], what: str) -> None:
    if not waiter.done():
        waiter.set_exception(error(what))


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one request/response at a time."""

    __slots__ = (
        "_drain", "_poller", "_quickack", "_waiter", "buffered", "chunks", "counted", "error", "got_bytes",
        "head_done", "headers", "idle_since", "interim", "keep_alive", "key", "loop", "no_body", "on_lost", "parser",
        "read_paused", "state", "status", "transport", "write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int], on_lost: Any,
                 tcp_tuning: bool = True) -> None:
        self.loop = loop
        self._quickack: Any = tcp_tuning  # replaced by the socket once connected, or None
        self.key = key
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._poller: Any = None
        self.counted = False  # in the pool's count of open connections (set once the connect succeeded)
        self.state = _State.IDLE
        self.idle_since = 0.0
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._begin(no_body=False)

    def _begin(self, no_body: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.interim = False
        self.no_body = no_body  # a HEAD request: the head is the whole response
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.keep_alive = True
        self.read_paused = False
        self.got_bytes = False
        self.error: Exception | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        tune, self._quickack = self._quickack, None
        if sock is None:
            return
        if sys.platform != "win32":  # for the staleness check before reuse: one poll(2) call, no allocation
            self._poller = select.poll()
            self._poller.register(sock.fileno(), select.POLLIN)
        else:  # Windows: select(2) on the one socket
            self._poller = _SelectPoller(sock)
        if tune and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if _QUICKACK is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                    self._quickack = sock
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self._quickack is not None:  # the kernel drops quick-ACK mode by itself: re-arm it for the next read
            try:
                self._quickack.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                self._quickack = None
        if self.state is not _State.ACTIVE:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP from upstream: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        if was is not _State.DONE:  # a finished response stays readable to its end
            self.state = _State.CLOSED
        if was is _State.ACTIVE:
            if exc is None and self.head_done and self._close_delimited():
                self.state = _State.DONE  # no length, not chunked: a clean close ends the body
                self.keep_alive = False
            elif self.error is None:
                if exc is not None:
                    self.error = httpx.ReadError(f"upstream connection broke: {exc}")
                elif not self.got_bytes:
                    self.error = httpx.RemoteProtocolError("upstream closed the connection without a response")
                else:
                    self.error = httpx.RemoteProtocolError("upstream closed the connection mid-response")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(httpx.WriteError("upstream connection closed while sending"))
        self.on_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _close_delimited(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # --- httptools callbacks -------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue, 103 Early Hints: the final response follows
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        if self.no_body:
            self.state = _State.DONE
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.no_body:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.state is _State.ACTIVE:
            self.state = _State.DONE
        self._wake()

    # --- used by the transport -------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        waiter = self._waiter = self.loop.create_future()
        if timeout is None:
            await waiter
            return
        timer = self.loop.call_later(timeout, _expire, waiter, httpx.ReadTimeout, "upstream read timed out")
        try:
            await waiter
        finally:
            timer.cancel()

    def is_stale(self) -> bool:
        """An idle connection that is closed or readable: the server hung up (or sent garbage). Asked of
        the socket itself, since the event loop may not have processed a FIN that already arrived."""
        if self.state is not _State.IDLE or self.transport is None or self.transport.is_closing():
            return True
        if self._poller is None:
            return False
        try:
            return bool(self._poller.poll(0))
        except (OSError, ValueError):
            return True

    def send(self, data: bytes, no_body: bool) -> None:
        if self.state is _State.CLOSED or self.transport is None or self.transport.is_closing():
            raise _NotSent("the upstream connection closed before the request was sent")
        self._begin(no_body)
        self.state = _State.ACTIVE
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self, write_timeout: float | None) -> None:
        """Wait until the send buffer is below its high-water mark again (only called when it is above)."""
        self._drain = self.loop.create_future()
        timer = None
        if write_timeout is not None:
            timer = self.loop.call_later(write_timeout, _expire, self._drain, httpx.WriteTimeout,
                                         "sending the request to the upstream timed out")
        try:
            await self._drain
        finally:
            self._drain = None
            if timer is not None:
                timer.cancel()

    async def response_head(self, timeout: float | None) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait(timeout)

    async def next_chunk(self, timeout: float | None) -> bytes | None:
        """Everything that arrived since the last call (never waiting for more), or None at the end.

        Under load several chunks are often buffered already; handing them over together means one
        relay step and one write to the client instead of one per chunk, at no cost in latency.
        """
        while True:
            if self.chunks:
                chunks = self.chunks
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                if self.read_paused and self.transport is not None:
                    self.read_paused = False  # the consumer took the buffer: read on
                    self.transport.resume_reading()
                return chunk
            if self.state is _State.DONE:
                return None
            if self.error is not None:
                raise self.error if isinstance(self.error, httpx.TransportError) else httpx.ReadError(str(self.error))
            await self._wait(timeout)

    @property
    def reusable(self) -> bool:
        return self.state is _State.DONE and self.keep_alive and not self.chunks and self.transport is not None \
            and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.state is not _State.DONE:  # a finished response stays readable to its end
            self.state = _State.CLOSED


class _ResponseStream(httpx.AsyncByteStream):
    __slots__ = ("conn", "pool", "read_timeout", "released")

    def __init__(self, conn: _Connection, pool: FastTransport, read_timeout: float | None) -> None:
        self.conn = conn
        self.pool = pool
        self.read_timeout = read_timeout
        self.released = False

    # A plain async iterator rather than an async generator: one coroutine call per chunk, no
    # generator frame to resume (measurable when a stream relays hundreds of small chunks).
    def __aiter__(self) -> _ResponseStream:  # type: ignore[override]
        return self

    async def __anext__(self) -> bytes:
        if self.released:  # read to its end (or closed) already: the connection may serve someone else now
            raise StopAsyncIteration
        try:
            chunk = await self.conn.next_chunk(self.read_timeout)
        except BaseException:
            self._release()
            raise
        if chunk is None:
            self._release()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.conn.reusable:
            self.conn.state = _State.IDLE
            self.pool._put_idle(self.conn)
        else:
            self.conn.close()  # mid-response: closing tells the upstream the client has gone


class FastTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive pool for plain-HTTP and TLS upstreams."""

    def __init__(
        self,
        *,
        max_connections: int | None = None,
        max_idle_per_host: int = 512,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        default_timeout: httpx.Timeout | None = None,
        tcp_tuning: bool = True,
    ) -> None:
        self.max_connections = max_connections
        self.tcp_tuning = tcp_tuning
        self.max_idle = max_idle_per_host
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._default_timeout = (default_timeout or httpx.Timeout(None)).as_dict()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open = 0  # live connections, idle ones included, plus connects under way
        self._pool_waiters: deque[asyncio.Future[None]] = deque()

    # --- the pool ----------------------------------------------------------------------------------------

    def _put_idle(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)
        self._wake_pool()

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.keepalive_expiry and not conn.is_stale():
                return conn
            conn.close()
        return None

    def _on_lost(self, conn: _Connection) -> None:
        if conn.counted:  # a connect that failed half-way was uncounted by _connect itself
            self._open -= 1
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_pool()

    def _wake_pool(self) -> None:
        while self._pool_waiters:
            waiter = self._pool_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _reserve(self, key: tuple[str, str, int], timeout: float | None) -> _Connection | None:
        """An idle connection for ``key``, or None after reserving room for a new one (waiting for room
        while ``max_connections`` are open)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            conn = self._take_idle(key)
            if conn is not None:
                return conn
            if self.max_connections is None or self._open < self.max_connections:
                self._open += 1
                return None
            self._close_an_idle_connection()  # of another upstream: its slot frees once it has closed
            waiter = loop.create_future()
            self._pool_waiters.append(waiter)
            timer = None
            if deadline is not None:
                timer = loop.call_at(deadline, _expire, waiter, httpx.PoolTimeout,
                                     "no upstream connection became free in time")
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_pool()  # woken as we were cancelled: pass the wake-up on
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if waiter in self._pool_waiters:
                    self._pool_waiters.remove(waiter)

    def _close_an_idle_connection(self) -> None:
        for idle in self._idle.values():
            if idle:
                idle.pop(0).close()
                return

    async def _connect(self, key: tuple[str, str, int], timeout: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            tls = self._ssl_context or _default_ssl_context()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, key, self._on_lost, self.tcp_tuning), host, port, ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError as exc:
            self._open -= 1
            self._wake_pool()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except ssl.SSLError as exc:
            self._open -= 1
            self._wake_pool()
            raise httpx.ConnectError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
        except OSError as exc:
            self._open -= 1
            self._wake_pool()
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        except BaseException:
            self._open -= 1
            self._wake_pool()
            raise
        conn.counted = True
        return conn

    # --- requests ------------------------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the upstream URL must be http:// or https://, not {scheme}://")
        key = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeout = request.extensions.get("timeout") or self._default_timeout
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        method = request.method.encode()
        head = [method, b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        return await self.send_bytes(key, method, b"".join(head) + body, timeout, request)

    async def send_bytes(self, key: tuple[str, str, int], method: bytes, payload: bytes, timeout: dict[str, Any],
                         request: httpx.Request | None = None) -> httpx.Response:
        """Send a request already encoded (head and body) to ``key`` (scheme, host, port): the hot path's way in,
        skipping an ``httpx.Request`` the gateway would build only to have it taken apart here again."""
        no_body = method == b"HEAD"
        conn: _Connection | None = None
        for attempt in (0, 1):
            conn = self._take_idle(key)  # the common case: no await, no pool bookkeeping
            if conn is None:
                conn = await self._reserve(key, timeout.get("pool"))
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, timeout.get("connect"))
            try:
                conn.send(payload, no_body)
                if conn.write_paused:
                    await conn.drain(timeout.get("write"))
                await conn.response_head(timeout.get("read"))
                break
            except httpx.TransportError as exc:
                conn.close()
                if attempt == 0 and _may_resend(exc, method, reused, conn.got_bytes):
                    continue
                raise
            except BaseException:
                conn.close()
                raise
        assert conn is not None
        return httpx.Response(
            conn.status, headers=conn.headers, stream=_ResponseStream(conn, self, timeout.get("read")),
            request=request, extensions={"http_version": b"HTTP/1.1"},
        )

    def prune_idle(self) -> int:
        """Close connections idle for longer than the keep-alive expiry (or closed by the server)."""
        now = time.monotonic()
        pruned = 0
        for idle in self._idle.values():
            for conn in list(idle):
                if now - conn.idle_since >= self.keepalive_expiry or conn.is_stale():
                    idle.remove(conn)
                    conn.close()
                    pruned += 1
        return pruned

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _may_resend(exc: httpx.TransportError, method: bytes, reused: bool, got_bytes: bool) -> bool:
    """Whether a failed request may go again on a fresh connection: when it provably never left, or when
    it is idempotent and met a reused connection dying before any answer. A POST that was written is
    never resent: the server may be generating it."""
    if isinstance(exc, _NotSent):
        return True
    return reused and not got_bytes and method in _IDEMPOTENT and not isinstance(exc, httpx.TimeoutException)


_DEFAULT_SSL: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    """The system trust store; honours ``SSL_CERT_FILE``/``SSL_CERT_DIR`` like Python's default."""
    global _DEFAULT_SSL
    if _DEFAULT_SSL is None:
        _DEFAULT_SSL = ssl.create_default_context()
    return _DEFAULT_SSL


def ssl_context(ca_bundle: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context: the system store (and ``SSL_CERT_FILE``) plus an optional CA bundle, or none at all."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _SelectPoller:
    """``select.poll``'s one method this module uses, for platforms without poll(2) (Windows)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def poll(self, timeout: float) -> list[int]:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return [1] if readable else []
