"""Request bodies on the routes FastAPI serves (files, batches, admin…): at most a limit — ``GATEWAY_MAX_BODY_BYTES``,
or ``GATEWAY_MAX_FILE_BYTES`` and the form's fields for an upload — refused with 413 from the declared length before
a byte is read, or the moment a chunked body passes it; and each piece within ``GATEWAY_BODY_TIMEOUT`` (408), so a
client that stops sending mid-body holds nothing for long. The proxied endpoints read their bodies themselves, with
the same rules (``app.proxy.handler``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.core.errors import GatewayError, request_timeout

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def bounded(receive: Receive, limit: int, timeout: float, too_large: GatewayError) -> Receive:
    """``receive`` that raises ``too_large`` past ``limit`` body bytes and a 408 when a piece takes over
    ``timeout`` s; once the body is whole it waits as long as it must (for the client leaving)."""
    size = 0
    whole = False

    async def receive_bounded() -> Message:
        nonlocal size, whole
        if whole:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except TimeoutError:
            raise request_timeout(timeout) from None
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise too_large
            whole = not message.get("more_body", False)
        else:
            whole = True
        return message

    return receive_bounded
