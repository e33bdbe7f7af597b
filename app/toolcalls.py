"""Tool calls fixed in flight: Foundry Local hands a model's tool calls back as the text the model wrote,
``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` in ``content``, with ``tool_calls`` empty (its
issue #874). For registry entries with ``parse_tool_calls`` the gateway turns that text into OpenAI
``tool_calls``: in JSON answers (:func:`extract`) and in streams (:class:`ToolCallStream`), where the
call's ``id`` and ``function.name`` go out as soon as the name is written and the arguments follow in
fragments as the model writes them.

Nothing the model wrote is lost: text outside the tags stays content, and a tagged block that is not a
call (no name, not JSON) goes out as the text it was.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# The start of a call whose arguments come last as an object (Qwen's and Hermes' format): those stream.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\{)')

JSON = dict[str, Any]


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parse_call(text: str) -> tuple[str, str] | None:
    """The name and arguments (a JSON string) of one call's text, or None if it is not a call."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    return data["name"], arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


def extract(text: str) -> tuple[str | None, list[JSON]]:
    """A whole answer's text: what stays content (None when only calls remain) and the tool calls."""
    calls: list[JSON] = []
    kept: list[str] = []
    rest = text
    while (start := rest.find(OPEN)) >= 0 and (end := rest.find(CLOSE, start)) >= 0:
        kept.append(rest[:start])
        parsed = parse_call(rest[start + len(OPEN):end])
        if parsed is None:
            kept.append(rest[start:end + len(CLOSE)])
        else:
            calls.append({"id": call_id(), "type": "function",
                          "function": {"name": parsed[0], "arguments": parsed[1]}})
        rest = rest[end + len(CLOSE):]
    kept.append(rest)
    content = "".join(kept)
    if calls and not content.strip():
        return None, calls
    return content, calls


def fix_answer(data: JSON) -> JSON:
    """A chat completion with tool calls as text → the same with ``tool_calls`` and ``finish_reason``."""
    for choice in data.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or message.get("tool_calls"):
            continue
        content, calls = extract(message["content"])
        if calls:
            message["content"] = content
            message["tool_calls"] = calls
            if choice.get("finish_reason") in ("stop", None):
                choice["finish_reason"] = "tool_calls"
    return data


def _held_prefix(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag`` (kept until the next piece)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ToolCallStream:
    """One stream's content, piece by piece, as the deltas to send instead: ``{"content": …}`` and
    ``{"tool_calls": [{index, id, type, function: {name, arguments}}]}`` fragments."""

    __slots__ = ("arguments_at", "buffer", "calls", "in_call", "sent", "spaces")

    def __init__(self) -> None:
        self.buffer = ""  # text not sent yet: a possible start of a tag, or the call being written
        self.in_call = False
        self.calls = 0  # calls started so far (the next one's index)
        self.arguments_at = -1  # in a streaming call: where its arguments start in ``buffer`` (-1: not yet)
        self.sent = 0  # in a streaming call: how much of ``buffer`` went out as arguments
        self.spaces = ""  # whitespace after a call, sent only if more text follows

    def feed(self, text: str) -> list[JSON]:
        self.buffer += text
        out: list[JSON] = []
        while True:
            if self.in_call:
                if not self._call(out):
                    return out
            else:
                start = self.buffer.find(OPEN)
                if start < 0:
                    held = _held_prefix(self.buffer, OPEN)
                    self._text(self.buffer[:len(self.buffer) - held], out)
                    self.buffer = self.buffer[len(self.buffer) - held:]
                    return out
                self._text(self.buffer[:start], out)
                self.buffer = self.buffer[start + len(OPEN):]
                self.in_call, self.arguments_at, self.sent = True, -1, 0

    def end(self) -> list[JSON]:
        """The stream ended: what is still held goes out as the text it was (an unfinished call too)."""
        out: list[JSON] = []
        if self.in_call:
            if self.arguments_at >= 0:  # its name went out: the arguments as far as written
                self._arguments(self.buffer[self.sent:], out)
            else:
                self._text(OPEN + self.buffer, out)
        else:
            self._text(self.buffer, out)
        self.buffer, self.in_call = "", False
        return out

    def _text(self, text: str, out: list[JSON]) -> None:
        if not text:
            return
        if self.calls and not text.strip():  # between or after calls: whitespace waits for real text
            self.spaces += text
            return
        out.append({"content": self.spaces + text})
        self.spaces = ""

    def _call(self, out: list[JSON]) -> bool:
        """Advance the call being written; False when it needs more text."""
        end = self.buffer.find(CLOSE)
        if self.arguments_at < 0:
            head = _HEAD.match(self.buffer)
            if head is None:
                if end < 0:
                    return False
                self._whole_call(self.buffer[:end], out)
            else:
                out.append({"tool_calls": [{"index": self.calls, "id": call_id(), "type": "function",
                                            "function": {"name": orjson.loads(f'"{head.group(1)}"'),
                                                         "arguments": ""}}]})
                self.calls += 1
                self.arguments_at = self.sent = head.end()
                return True
        elif end < 0:
            # send the arguments so far, but not what may be the call's own closing brace or the tag's start
            stop = len(self.buffer) - _held_prefix(self.buffer, CLOSE)
            stop = len(self.buffer[:stop].rstrip().removesuffix("}").rstrip())
            if stop > self.sent:
                self._arguments(self.buffer[self.sent:stop], out)
                self.sent = stop
            return False
        else:
            call = self.buffer[:end].rstrip().removesuffix("}").rstrip()
            self._arguments(call[self.sent:], out)
        self.buffer = self.buffer[end + len(CLOSE):]
        self.in_call = False
        return True

    def _whole_call(self, text: str, out: list[JSON]) -> None:
        parsed = parse_call(text)
        if parsed is None:
            self._text(OPEN + text + CLOSE, out)
            return
        out.append({"tool_calls": [{"index": self.calls, "id": call_id(), "type": "function",
                                    "function": {"name": parsed[0], "arguments": parsed[1]}}]})
        self.calls += 1

    def _arguments(self, text: str, out: list[JSON]) -> None:
        if text:
            out.append({"tool_calls": [{"index": self.calls - 1, "function": {"arguments": text}}]})


class ToolCallChunks:
    """A chat-completions stream's chunks through a :class:`ToolCallStream`: content deltas rewritten, as many
    chunks out as the rewrite needs, ``finish_reason`` ``tool_calls`` once a call went out."""

    __slots__ = ("last", "stream")

    def __init__(self) -> None:
        self.stream = ToolCallStream()
        self.last: JSON | None = None  # the latest chunk, the template for what the end flushes

    def chunk(self, data: JSON) -> list[JSON]:
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return [data]
        self.last = data
        choice = choices[0]
        found = choice.get("delta")
        delta: JSON = found if isinstance(found, dict) else {}
        content = delta.get("content")
        out: list[JSON] = []
        if isinstance(content, str) and content:
            deltas = self.stream.feed(content)
            rest = {k: v for k, v in delta.items() if k != "content"}
            if rest:  # the role, say: keep it on its own chunk
                out.append(_with(data, choice, {**rest, "content": ""}, None))
            out += [_with(data, choice, d, None) for d in deltas]
        finish = choice.get("finish_reason")
        if finish is not None:
            out += [_with(data, choice, d, None) for d in self.stream.end()]
            if finish == "stop" and self.stream.calls:
                finish = "tool_calls"
            out.append(_with(data, choice, {}, finish))
        elif not (isinstance(content, str) and content):
            out.append(data)
        return out

    def end(self) -> list[JSON]:
        """The stream ended without a finish chunk: flush what is held."""
        if self.last is None:
            return []
        choice = self.last["choices"][0]
        return [_with(self.last, choice, d, None) for d in self.stream.end()]


def _with(chunk: JSON, choice: JSON, delta: JSON, finish: str | None) -> JSON:
    return {**chunk, "choices": [{**choice, "delta": delta, "finish_reason": finish}]}
