"""Request bodies on the routes FastAPI serves (files, batches, admin…): at most a limit — ``GATEWAY_MAX_BODY_BYTES``,
or ``GATEWAY_MAX_FILE_BYTES`` and the form's fields for an upload — refused with 413 from the declared length before
a byte is read, or the moment a chunked body passes it. The proxied endpoints read their bodies themselves, with the
same rule (``app.proxy.handler``); a body that stops coming is the protocol's (``app.server.protocol``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.core.errors import GatewayError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def bounded(receive: Receive, limit: int, too_large: GatewayError) -> Receive:
    """``receive`` that raises ``too_large`` past ``limit`` body bytes."""
    size = 0

    async def receive_bounded() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise too_large
        return message

    return receive_bounded
