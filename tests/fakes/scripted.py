"""A scripted raw HTTP/1.1 server for transport tests: every connection runs a test-supplied coroutine
that reads requests and writes exactly the bytes the case needs (or resets, stalls, closes).

It runs in the test's own event loop on 127.0.0.1 and records what it saw — connections, requests
with their bodies, connections closed by the client — with asyncio events to wait on, so tests never
guess with sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Conn:
    """The server's side of one connection."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: ScriptedServer
    requests: list[Request] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += await self.reader.readexactly(size + 2)
                body = body[:-2]
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
        request = Request(method, target, headers, body)
        self.requests.append(request)
        self.server.requests.append(request)
        self.server.request_seen.set()
        return request

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def stop_reading(self) -> None:
        """Leave what the client sends in the kernel: its send buffer fills and its writes block."""
        self.writer.transport.pause_reading()

    def resume_reading(self) -> None:
        self.writer.transport.resume_reading()

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        """Close with an RST instead of a FIN (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def wait_closed_by_client(self) -> None:
        """Until the client closes its end (EOF or reset)."""
        while True:
            try:
                if not await self.reader.read(65536):
                    return
            except ConnectionError:
                return


Script = Callable[[Conn], Awaitable[None]]


class ScriptedServer:
    """``async with ScriptedServer(script) as server:`` — ``server.url`` serves ``script`` per connection."""

    def __init__(self, script: Script, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.ssl_context = ssl_context
        self.connections: list[Conn] = []
        self.requests: list[Request] = []
        self.open = 0
        self.request_seen = asyncio.Event()
        self.all_closed = asyncio.Event()
        self.all_closed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = "localhost" if self.ssl_context else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(len(self.connections), reader, writer, self)
        self.connections.append(conn)
        self.open += 1
        self.all_closed.clear()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(conn)
            await conn.wait_closed_by_client()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()
            conn.closed.set()
            self.open -= 1
            if self.open == 0:
                self.all_closed.set()
            self._tasks.discard(task)


async def serve_forever(conn: Conn, respond: Callable[[Conn, Request], Awaitable[None]]) -> None:
    """Keep-alive: answer every request on the connection with ``respond``."""
    while (request := await conn.read_request()) is not None:
        await respond(conn, request)


def response(status: int = 200, body: bytes = b"ok", headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{headers}\r\n").encode() + body


def chunked(*parts: bytes, status: int = 200) -> bytes:
    out = f"HTTP/1.1 {status} OK\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    for part in parts:
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"
