"""A lean HTTP/1.1 keep-alive transport for httpx: asyncio protocols plus httptools' parser.

Why: the gateway talks to one or two loopback upstreams, with small requests and streamed replies,
on every request. httpx's default pool (httpcore) costs several ms of CPU per request at concurrency
32 and aiohttp's ~0.3 ms; this transport does only what that job needs (no TLS, no proxies, no
HTTP/2, no redirects) and measures far cheaper (docs/performance.md). It is a regular
``httpx.AsyncBaseTransport``, so the rest of the code keeps httpx's Request/Response API.

Behaviour that matters for a proxy:
- body chunks are handed over as they arrive (no buffering), with read back-pressure;
- closing a response before its end closes the connection, so the upstream sees the client leave;
- a request on a reused connection that the server had already closed is retried once, on a fresh one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import httptools
import httpx

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one request/response at a time."""

    __slots__ = (
        "_waiter", "buffered", "chunks", "closed", "complete", "error", "got_bytes", "headers",
        "headers_done", "idle_since", "keep_alive", "loop", "parser", "paused", "status", "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = True
        self.paused = False
        self.got_bytes = False
        self.error: Exception | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self._close_delimited():
            self.complete = True  # no length, not chunked: the body ends with the connection
            self.keep_alive = False
        if not self.complete and self.error is None:
            self.error = httpx.RemoteProtocolError("upstream closed the connection mid-response")
        self._wake()

    def _close_delimited(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # --- httptools callbacks -------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
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

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        await self._waiter

    def send(self, data: bytes) -> None:
        self._reset()
        assert self.transport is not None
        self.transport.write(data)

    async def response_head(self) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def next_chunk(self) -> bytes | None:
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
                if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.error is not None:
                raise httpx.ReadError(str(self.error))
            await self._wait()

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self.chunks

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _ResponseStream(httpx.AsyncByteStream):
    __slots__ = ("conn", "key", "pool", "released")

    def __init__(self, conn: _Connection, pool: FastTransport, key: tuple[str, int]) -> None:
        self.conn = conn
        self.pool = pool
        self.key = key
        self.released = False

    # A plain async iterator rather than an async generator: one coroutine call per chunk, no
    # generator frame to resume (measurable when a stream relays hundreds of small chunks).
    def __aiter__(self) -> _ResponseStream:  # type: ignore[override]
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.conn.next_chunk()
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
            self.pool._put_idle(self.key, self.conn)
        else:
            self.conn.close()  # mid-response: closing tells the upstream the client has gone


class FastTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive pool for plain-HTTP upstreams."""

    def __init__(self, *, max_idle_per_host: int = 512, keepalive_expiry: float = 30.0,
                 connect_timeout: float = 5.0) -> None:
        self.max_idle = max_idle_per_host
        self.keepalive_expiry = keepalive_expiry
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    def _put_idle(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_expiry:
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), key[0], key[1])
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from exc
        return conn

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"FastTransport speaks plain HTTP only, not {url.scheme}")
        key = (url.host, url.port or 80)
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        head = [request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        payload = b"".join(head) + body

        conn = self._take_idle(key)
        reused = conn is not None
        for attempt in (0, 1):
            if conn is None:
                conn = await self._connect(key)
            conn.send(payload)
            try:
                await conn.response_head()
                break
            except httpx.HTTPError:
                conn.close()
                if attempt == 0 and reused and not conn.got_bytes:
                    conn, reused = None, False  # the server had closed this idle connection: retry fresh
                    continue
                raise
            except BaseException:
                conn.close()
                raise
        assert conn is not None
        return httpx.Response(
            conn.status, headers=conn.headers, stream=_ResponseStream(conn, self, key), request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    def prune_idle(self) -> int:
        """Close connections idle for longer than the keep-alive expiry; returns how many."""
        now = time.monotonic()
        pruned = 0
        for idle in self._idle.values():
            keep = [c for c in idle if not c.closed and now - c.idle_since < self.keepalive_expiry]
            for conn in idle:
                if conn not in keep:
                    conn.close()
                    pruned += 1
            idle[:] = keep
        return pruned

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
