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
    while (start := rest.find(OPEN)) >= 0:
        body = rest[start + len(OPEN):]
        end = _object_end(body)
        if end == 0:  # not followed by an object: the tag is text
            kept.append(rest[:start + len(OPEN)])
            rest = body
            continue
        close = body.find(CLOSE, max(end, 0))
        if close < 0:
            break
        kept.append(rest[:start])
        parsed = parse_call(body[:close])
        if parsed is None:
            kept.append(rest[start:start + len(OPEN) + close + len(CLOSE)])
        else:
            calls.append({"id": call_id(), "type": "function",
                          "function": {"name": parsed[0], "arguments": parsed[1]}})
        rest = body[close + len(CLOSE):]
    kept.append(rest)
    content = "".join(kept)
    if calls and not content.strip():
        return None, calls
    return content, calls


def _object_end(text: str) -> int:
    """Where the JSON object that ``text`` starts with (after whitespace) ends — the index after its closing
    brace; -1 while it is unfinished, 0 if ``text`` does not start with an object. Braces and tags inside
    strings do not count."""
    depth = 0
    in_string = escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"' and depth:
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if not depth:
                return index + 1
        elif not depth and not char.isspace():
            return 0
    return -1


def _string(raw: str) -> str | None:
    """A JSON string's body as text (None if the model wrote an invalid escape)."""
    try:
        value = orjson.loads(f'"{raw}"')
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


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
        """The stream ended: what is still held goes out as the text it was (an unfinished call too; one whose
        name went out already sent its arguments as far as written)."""
        out: list[JSON] = []
        if self.in_call and self.arguments_at < 0:
            self._text(OPEN + self.buffer, out)
        elif not self.in_call:
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
        if self.arguments_at < 0:
            return self._call_start(out)
        length = _object_end(self.buffer[self.arguments_at:])
        if length < 0:  # the arguments object is still open: all of it so far is arguments
            self._arguments(self.buffer[self.sent:], out)
            self.sent = len(self.buffer)
            return False
        arguments_end = self.arguments_at + length
        self._arguments(self.buffer[self.sent:arguments_end], out)
        self.sent = arguments_end
        return self._close(arguments_end)

    def _call_start(self, out: list[JSON]) -> bool:
        head = _HEAD.match(self.buffer)
        name = _string(head.group(1)) if head is not None else None
        if head is not None and name is not None:  # arguments last: they stream as written
            out.append({"tool_calls": [{"index": self.calls, "id": call_id(), "type": "function",
                                        "function": {"name": name, "arguments": ""}}]})
            self.calls += 1
            self.arguments_at = self.sent = head.end()
            return True
        stripped = self.buffer.lstrip()
        if stripped and not stripped.startswith("{"):  # not a call: the tag was text
            self._text(OPEN, out)
            self.in_call = False
            return True
        end = _object_end(self.buffer)
        close = self.buffer.find(CLOSE, end) if end > 0 else -1
        if close < 0:
            return False
        self._whole_call(self.buffer[:close], out)
        return self._close(close)

    def _close(self, after: int) -> bool:
        """The call's tag closes after ``after``: done with it (False while the tag has not come)."""
        close = self.buffer.find(CLOSE, after)
        if close < 0:
            return False
        self.buffer = self.buffer[close + len(CLOSE):]
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
        if "usage" in data:  # one chunk became several: the usage once, on the last
            out = [{k: v for k, v in chunk.items() if k != "usage"} for chunk in out[:-1]] + out[-1:]
        return out

    def end(self) -> list[JSON]:
        """The stream ended without a finish chunk: flush what is held."""
        if self.last is None:
            return []
        choice = self.last["choices"][0]
        return [_with(self.last, choice, d, None) for d in self.stream.end()]


def _with(chunk: JSON, choice: JSON, delta: JSON, finish: str | None) -> JSON:
    return {**chunk, "choices": [{**choice, "delta": delta, "finish_reason": finish}]}
