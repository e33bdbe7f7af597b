"""Server-sent events on the hot path: split the upstream's bytes into complete events and look inside
only where the gateway must (first content for TTFT, usage for token metrics, error events, the end).

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
from collections.abc import Callable
from typing import Any, Protocol

import orjson

# An event ends where a line terminator is followed by another one (the empty line).
_BOUNDARY = re.compile(rb"(?:\r\n|\r(?!\n)|\n){2}")
_LINE = re.compile(rb"\r\n|\r|\n")
_ENDS_EVENT = re.compile(rb"(?:\r\n|\r(?!\n)|\n){2}\Z")
_ENDS_LINE = re.compile(rb"[\r\n]\Z")
# One scan per block finds the rare events that need a closer look: a usage object or an error key
# (an "error" inside content text only costs a closer look; the JSON decides).
_SPECIAL = re.compile(rb'"usage"\s*:\s*\{|"error"\s*:')
_CONTENT = re.compile(rb'"(?:content|text|reasoning_content|arguments)"\s*:\s*"[^"]')
_RESPONSES_CONTENT = re.compile(rb'"delta"\s*:\s*"[^"]')
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_DONE = re.compile(rb"(?:^|(?<=[\r\n]))data: ?\[DONE\][ \t]*(?:\r\n|\r|\n|$)", re.MULTILINE)


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


class ChunkRewriter(Protocol):
    """Rewrites a stream's chunks: as many out as it needs for each one in, and what it held at the end."""

    def chunk(self, data: dict[str, Any]) -> list[dict[str, Any]]: ...

    def end(self) -> list[dict[str, Any]]: ...


class StreamInspector:
    """Watches relayed blocks of a chat-completions stream: timestamps content, collects usage, notices the
    end, strips, translates or rewrites (tool calls)."""

    content = _CONTENT  # what an event carrying generated text looks like in this kind of stream

    __slots__ = (
        "clock", "done", "error", "first_content", "last_content", "rewriter", "strip_usage", "translate", "usage",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        strip_usage: bool,
        translate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        rewriter: ChunkRewriter | None = None,
    ) -> None:
        self.clock = clock
        self.strip_usage = strip_usage
        self.translate = translate
        self.rewriter = rewriter
        self.first_content = 0.0
        self.last_content = 0.0
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.done = False

    def block(self, block: bytes) -> bytes:
        """Inspect one block of complete events; returns the bytes to send on."""
        if not block:
            return block
        # substring tests (memchr speed) before any regular expression: most blocks are plain content
        rewrites = self.translate is not None or self.rewriter is not None
        if rewrites or ((b'"usage"' in block or b'"error"' in block) and _SPECIAL.search(block)):
            return self._rewrite(block)
        if b"[DONE]" in block and _DONE.search(block):
            self.done = True
            if not self.first_content and self.content.search(block):
                self.first_content = self.last_content = self.clock()
        elif self.first_content:
            self.last_content = self.clock()  # after the first token, every plain block carries content
        elif self.content.search(block):
            self.first_content = self.last_content = self.clock()
        return block

    def finish(self, tail: bytes) -> bytes:
        """The stream ended with ``tail`` unterminated: inspect it as a last event, completed with a blank line."""
        if not tail.strip():
            return tail
        if not _ENDS_EVENT.search(tail):  # a CR held back at the end may already have ended the event
            line_end = _ENDS_LINE.search(tail)
            newline = b"\r\n" if b"\r\n" in tail else b"\n"
            tail += newline if line_end else newline + newline
        return self.block(tail)

    def _rewrite(self, block: bytes) -> bytes:
        out: list[bytes] = []
        plain_content = False
        for event in split_events(block):
            if self.translate is None and self.rewriter is None and b'"usage"' not in event and b'"error"' not in event:
                # Under load a whole stream can arrive as one block: only the events that need it are parsed.
                if b"[DONE]" in event and _DONE.search(event):
                    self.done = True
                elif self.first_content:
                    plain_content = True
                elif self.content.search(event):
                    self.first_content = self.last_content = self.clock()
                out.append(event)
                continue
            data = event_json(event)
            if not isinstance(data, dict):
                if _DONE.search(event):
                    self.done = True
                    if self.rewriter is not None:  # ended without a finish chunk: what it held goes first
                        out += [self._send(held) for held in self.rewriter.end()]
                out.append(event)
                continue
            kept = self._event(data, event)
            if kept is not None:
                out.append(kept)
        if plain_content:
            self.last_content = max(self.last_content, self.clock())
        return b"".join(out)

    def _event(self, data: dict[str, Any], event: bytes) -> bytes | None:
        """A parsed event: note what it says; returns the bytes to send on (None drops it)."""
        if "error" in data and "choices" not in data:
            self.error = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
            return event
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            if self.strip_usage and not data.get("choices"):
                return None
            if self.strip_usage:
                data = {k: v for k, v in data.items() if k != "usage"}
                event = b"data: " + orjson.dumps(data) + b"\n\n"
        if self.rewriter is not None and "choices" in data:
            return b"".join(self._send(chunk) for chunk in self.rewriter.chunk(data)) or None
        self._timestamp(event)
        if self.translate is not None:
            event = b"data: " + orjson.dumps(self.translate(data)) + b"\n\n"
        return event

    def _send(self, data: dict[str, Any]) -> bytes:
        event = b"data: " + orjson.dumps(data) + b"\n\n"
        self._timestamp(event)
        return event

    def _timestamp(self, event: bytes) -> None:
        if self.content.search(event):
            now = self.clock()
            if not self.first_content:
                self.first_content = now
            self.last_content = now


class ResponsesInspector(StreamInspector):
    """The same for the Responses API's typed events: text in ``response.output_text.delta``, usage and the end
    in the terminal ``response.completed|incomplete|failed`` (a failure there, or an ``error`` event, is the
    stream's error)."""

    content = _RESPONSES_CONTENT
    __slots__ = ()

    def _event(self, data: dict[str, Any], event: bytes) -> bytes | None:
        kind = data.get("type")
        if kind in RESPONSES_TERMINAL:
            self.done = True
            found = data.get("response")
            response: dict[str, Any] = found if isinstance(found, dict) else {}
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.usage = responses_usage(usage)
            if kind == "response.failed":
                error = response.get("error")
                self.error = error if isinstance(error, dict) else {"message": "the response failed"}
        elif kind == "error":
            self.error = {"message": str(data.get("message") or "upstream error"), "code": data.get("code")}
        elif kind is None and "error" in data:  # the chat-style failure event
            error = data["error"]
            self.error = error if isinstance(error, dict) else {"message": str(error)}
        else:
            self._timestamp(event)
        return event


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """The Responses API's usage in chat-completions terms (what metrics and the access log count)."""
    return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
            "total_tokens": usage.get("total_tokens")}
