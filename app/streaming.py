"""Server-sent events on the hot path: split the upstream's bytes into complete events and look inside
only where the gateway must (first content for TTFT, usage for token metrics, error events).

Events are relayed as the upstream's own bytes; nothing is re-encoded except the usage chunk the
gateway itself asked for (dropped when the client did not ask) and, for ``/v1/completions`` served
by translation, each chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

DONE = b"data: [DONE]"
# One scan per block finds the rare events that need a closer look: a usage object or an error event.
_SPECIAL = re.compile(rb'"usage"\s*:\s*\{|^data:\s*\{\s*"error"\s*:', re.MULTILINE)
_CONTENT = re.compile(rb'"(?:content|text|reasoning_content)"\s*:\s*"[^"]')


class EventSplitter:
    """Cuts a byte stream at event boundaries (a blank line); keeps the incomplete tail."""

    __slots__ = ("sep", "tail")

    def __init__(self) -> None:
        self.tail = b""
        self.sep = b"\n\n"

    def feed(self, chunk: bytes) -> bytes:
        data = self.tail + chunk if self.tail else chunk
        end = data.rfind(self.sep)
        if end < 0 and self.sep == b"\n\n" and b"\r\n\r\n" in data:
            self.sep = b"\r\n\r\n"
            end = data.rfind(self.sep)
        if end < 0:
            self.tail = data
            return b""
        end += len(self.sep)
        self.tail = data[end:]
        return data[:end]


def events(block: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    return [event for event in block.split(sep) if event.strip()]


def event_json(event: bytes) -> Any:
    """The JSON payload of a ``data:`` event, or None."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload and payload != b"[DONE]":
                try:
                    return orjson.loads(payload)
                except orjson.JSONDecodeError:
                    return None
    return None


def error_event(message: str, type_: str = "api_error", code: str | None = None) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


class StreamInspector:
    """Watches relayed blocks: timestamps content, collects usage, strips or translates events."""

    __slots__ = (
        "clock", "done", "error", "first_content", "last_content", "strip_usage", "translate", "usage",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        strip_usage: bool,
        translate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.clock = clock
        self.strip_usage = strip_usage
        self.translate = translate
        self.first_content = 0.0
        self.last_content = 0.0
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.done = False

    def block(self, block: bytes, sep: bytes = b"\n\n") -> bytes:
        """Inspect one block of complete events; returns the bytes to send on."""
        if self.translate is not None or _SPECIAL.search(block):
            return self._rewrite(block, sep)
        if DONE in block:
            self.done = True
        elif self.first_content:
            self.last_content = self.clock()  # after the first token, every plain block carries content
        elif _CONTENT.search(block):
            self.first_content = self.last_content = self.clock()
        return block

    def _rewrite(self, block: bytes, sep: bytes) -> bytes:
        out: list[bytes] = []
        for event in events(block, sep):
            if event.startswith(DONE):
                self.done = True
                out.append(event)
                continue
            data = event_json(event)
            if not isinstance(data, dict):
                out.append(event)
                continue
            if "error" in data and "choices" not in data:
                self.error = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
                out.append(event)
                continue
            usage = data.get("usage")
            if isinstance(usage, dict):
                self.usage = usage
                if self.strip_usage and not data.get("choices"):
                    continue
                if self.strip_usage:
                    data = {k: v for k, v in data.items() if k != "usage"}
                    event = b"data: " + orjson.dumps(data)
            if _CONTENT.search(event):
                now = self.clock()
                if not self.first_content:
                    self.first_content = now
                self.last_content = now
            if self.translate is not None:
                event = b"data: " + orjson.dumps(self.translate(data))
            out.append(event)
        if not out:
            return b""
        return sep.join(out) + sep
