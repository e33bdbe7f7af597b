"""Requests the gateway makes of itself: an ASGI request handed straight to the proxy, with no socket — the
semantic cache's embeddings, a batch's lines. They are routed, admitted, limited, logged and cached like any
other request, as ``caller``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from app.access.middleware import ANYONE, SCOPE_KEY, Caller
from app.openai import Endpoint

Handle = Callable[[dict[str, Any], Any, Any, Endpoint], Awaitable[None]]


class Answer(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def ask(handle: Handle, endpoint: Endpoint, body: bytes, headers: list[tuple[bytes, bytes]],
              caller: Caller = ANYONE) -> Answer:
    """POST ``body`` to ``endpoint`` through ``handle`` (the proxy) and collect the whole answer."""
    sent: list[dict[str, Any]] = []
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Future()  # this "client" never leaves; the request's watcher is cancelled at its end
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": endpoint.path,
             "headers": [(b"content-type", b"application/json"), *headers], SCOPE_KEY: caller}
    await handle(scope, receive, send, endpoint)
    if not sent:
        return Answer(500, [], b"")
    return Answer(sent[0]["status"], list(sent[0].get("headers", [])), b"".join(m.get("body", b"") for m in sent[1:]))
