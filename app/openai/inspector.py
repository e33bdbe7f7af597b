"""Looking inside a relayed stream only where the gateway must: the first content (TTFT), usage (token metrics),
error events and the end — and, where asked, rewriting chunks (usage the client did not ask for, ``/v1/completions``
served by translation, tool calls rebuilt from text). Blocks that need nothing are passed on as the upstream's own
bytes; substring tests (memchr speed) come before any regular expression, because most blocks are plain content.

Each endpoint picks its inspector (``Endpoint.inspector``); the Responses API's typed events have their own
(``app.openai.responses``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from app.openai.sse import DONE, event_json, split_events

# One scan per block finds the rare events that need a closer look: a usage object or an error key
# (an "error" inside content text only costs a closer look; the JSON decides).
_SPECIAL = re.compile(rb'"usage"\s*:\s*\{|"error"\s*:')
_CONTENT = re.compile(rb'"(?:content|text|reasoning_content|arguments)"\s*:\s*"[^"]')
_ENDS_EVENT = re.compile(rb"(?:\r\n|\r(?!\n)|\n){2}\Z")
_ENDS_LINE = re.compile(rb"[\r\n]\Z")


class ChunkRewriter(Protocol):
    """Rewrites a stream's chunks: as many out as it needs for each one in, and what it held at the end."""

    def chunk(self, data: dict[str, Any]) -> list[dict[str, Any]]: ...

    def end(self) -> list[dict[str, Any]]: ...


class StreamInspector:
    """Watches relayed blocks of a chat-completions stream: timestamps content, collects usage, notices the
    end, strips, translates or rewrites (tool calls)."""

    content = _CONTENT  # what an event carrying generated text looks like in this kind of stream

    __slots__ = (
        "clock", "done", "error", "final", "first_content", "last_content", "rewriter", "strip_usage", "translate",
        "usage",
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
        self.final: dict[str, Any] | None = None  # the whole answer, where the stream's end carries it (Responses)
        self.done = False

    def block(self, block: bytes) -> bytes:
        """Inspect one block of complete events; returns the bytes to send on."""
        if not block:
            return block
        # substring tests (memchr speed) before any regular expression: most blocks are plain content
        rewrites = self.translate is not None or self.rewriter is not None
        if rewrites or ((b'"usage"' in block or b'"error"' in block) and _SPECIAL.search(block)):
            return self._rewrite(block)
        if b"[DONE]" in block and DONE.search(block):
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
                if b"[DONE]" in event and DONE.search(event):
                    self.done = True
                elif self.first_content:
                    plain_content = True
                elif self.content.search(event):
                    self.first_content = self.last_content = self.clock()
                out.append(event)
                continue
            data = event_json(event)
            if not isinstance(data, dict):
                if DONE.search(event):
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


def generated_texts(blocks: list[bytes]) -> list[str]:
    """The generated text in a stream's blocks as relayed: content, reasoning and tool-call arguments of chat
    chunks, completions' ``text``, the Responses API's ``….delta`` events (what a stream cut before its usage is
    counted by)."""
    texts: list[str] = []
    for block in blocks:
        for event in split_events(block):
            data = event_json(event)
            if not isinstance(data, dict):
                continue
            delta = data.get("delta")
            if isinstance(delta, str):
                texts.append(delta)
            for choice in data.get("choices") or ():
                if isinstance(choice, dict):
                    _choice_texts(choice, texts)
    return texts


def _choice_texts(choice: dict[str, Any], out: list[str]) -> None:
    if isinstance(choice.get("text"), str):
        out.append(choice["text"])
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return
    for key in ("content", "reasoning_content"):
        if isinstance(delta.get(key), str):
            out.append(delta[key])
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            out.append(function["arguments"])
