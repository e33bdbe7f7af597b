"""Server-sent events on the hot path: split the upstream's bytes into complete events, read an event's data.
What the gateway looks for inside them (first content, usage, errors, the end) is ``app.openai.inspector``.

Events are relayed as the upstream's own bytes; nothing is re-encoded except the usage chunk the
gateway itself asked for (dropped when the client did not ask), each chunk of a ``/v1/completions``
stream served by translation, and the chunks of a stream whose tool calls the gateway rebuilds.

The SSE rules this follows (WHATWG HTML, "Server-sent events"): a line ends with CRLF, LF or CR, any
mix of them; an event ends at an empty line; ``data`` lines of one event join with ``\\n``; one space
after the colon is dropped; lines starting with ``:`` are comments. The common case — LF only — takes a
fast path (one ``rfind`` per chunk); anything with a CR goes through a regular expression.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# An event ends where a line terminator is followed by another one (the empty line).
_BOUNDARY = re.compile(rb"(?:\r\n|\r(?!\n)|\n){2}")
_LINE = re.compile(rb"\r\n|\r|\n")
DONE = re.compile(rb"(?:^|(?<=[\r\n]))data: ?\[DONE\][ \t]*(?:\r\n|\r|\n|$)", re.MULTILINE)


def _last_boundary(data: bytes) -> int:
    """Offset just past the last complete event in ``data``, or -1."""
    if b"\r" not in data:
        end = data.rfind(b"\n\n")
        return end + 2 if end >= 0 else -1
    # A CR at the very end may be the first half of a CRLF: decide once the next byte is here.
    search = data[:-1] if data.endswith(b"\r") else data
    end = -1
    for match in _BOUNDARY.finditer(search):
        end = match.end()
    return end


class EventSplitter:
    """Cuts a byte stream at event boundaries; keeps the incomplete tail for the next chunk."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events now available (with their terminators), as one block."""
        data = self.tail + chunk if self.tail else chunk
        end = _last_boundary(data)
        if end < 0:
            self.tail = data
            return b""
        self.tail = data[end:]
        return data[:end]

    def flush(self) -> bytes:
        """At the end of the stream: whatever is left, an unterminated last event (or nothing)."""
        tail, self.tail = self.tail, b""
        return tail


def split_events(block: bytes) -> list[bytes]:
    """The events of a block, each with its own terminator (blank ones too): joining them gives the block back."""
    if b"\r" not in block:
        parts = block.split(b"\n\n")
        events = [part + b"\n\n" for part in parts[:-1]]
        if parts[-1]:
            events.append(parts[-1])
    else:
        events, start = [], 0
        for match in _BOUNDARY.finditer(block):
            events.append(block[start:match.end()])
            start = match.end()
        if start < len(block):
            events.append(block[start:])
    return events


def event_data(event: bytes) -> bytes | None:
    """The event's data as a client sees it (``data`` lines joined with LF), or None without any."""
    if b"\r" not in event:
        body = event.rstrip(b"\n")
        if body.startswith(b"data:") and b"\n" not in body:  # the usual event: one data line
            value = body[5:]
            return value[1:] if value.startswith(b" ") else value
    data: list[bytes] = []
    for line in _LINE.split(event) if b"\r" in event else event.split(b"\n"):
        if line.startswith(b"data"):
            name, _, value = line.partition(b":")
            if name != b"data":
                continue
            data.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(data) if data else None


def event_json(event: bytes) -> Any:
    """The JSON payload of a ``data`` event, or None."""
    data = event_data(event)
    if not data or data.strip() == b"[DONE]":
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def error_event(message: str, type_: str = "api_error", code: str | None = None) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"
