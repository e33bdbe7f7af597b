"""Tool calls fixed in flight: Foundry Local hands a model's tool calls back as the text the model wrote,
``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` in ``content``, with ``tool_calls`` empty (its
issue #874). For registry entries with ``parse_tool_calls`` the gateway turns that text into OpenAI
``tool_calls``: in streams (:class:`ToolCallStream`, one per choice), where the call's ``id`` and
``function.name`` go out as soon as the name is written and the arguments follow in fragments as the model
writes them, and in JSON answers (:func:`extract`), which run the very same parser over the whole text — so a
stream and a JSON answer of the same text always make the same message, however the stream was cut.

The parser is a state machine that sees every character once (the scanners keep their state between pieces):
a 50 KB call costs the same whether it comes in one piece or in 12,000.

- Text outside calls is content; whitespace at the end of the content is held until more text follows, and
  dropped if the answer ends with calls (OpenAI's ``content`` is then null).
- ``<tool_call>`` inside a fenced code block (between two runs of three or more backticks) is text.
- A call whose object starts ``{"name": "…", "arguments": {`` streams; its arguments are the text the model
  wrote. An object in another order is sent whole once it closes (arguments as compact JSON). A name that is
  empty or not a valid JSON string makes the tag text.
- After the arguments, further members of the call object are skipped; ``</tool_call>`` ends the call, and so
  does any text where the object or its tag should continue (the model left them out: the text is content, a
  next call is a call).

Nothing the model wrote is lost: a tag not followed by an object, an object that is not a call, or a call left
unfinished before its name was complete goes out as the text it was.
"""

from __future__ import annotations

import enum
import re
import secrets
from typing import Any

import orjson

OPEN, CLOSE = "<tool_call>", "</tool_call>"
JSON = dict[str, Any]

_TEXT_MARK = re.compile(r"<tool_call>|`{3,}")  # outside a fence: a call, or a fence opening
_FENCE_MARK = re.compile(r"`{3,}")  # inside a fence: only its end matters
_IN_STRING = re.compile(r'["\\]')
_STRUCTURE = re.compile(r'["{}]')
_STRUCTURE_OR_TAG = re.compile(r'["{}<]')
_WHITESPACE = " \t\r\n"
# The head of a streaming call, token by token ("STR" is the name): whitespace may come between tokens.
_HEAD = ("{", '"name"', ":", "STR", ",", '"arguments"', ":", "{")


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parse_call(text: str) -> tuple[str, str] | None:
    """The name and arguments (a JSON string) of one call's object text, or None if it is not a call."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    return data["name"], arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


def _string(raw: str) -> str | None:
    """A JSON string's body as text (None if the model wrote an invalid escape)."""
    try:
        value = orjson.loads(f'"{raw}"')
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


def _held_prefix(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag`` (kept until the next piece)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class _Scanner:
    """Finds where a JSON object ends, piece by piece: braces inside strings do not count. With ``tags`` it also
    stops at a ``<`` outside strings (a ``</tool_call>`` there ends a malformed call)."""

    __slots__ = ("depth", "escaped", "in_string")

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth
        self.in_string = False
        self.escaped = False

    def scan(self, text: str, pos: int, *, tags: bool) -> tuple[int, bool]:
        """From ``pos``: (index just past the brace that closes the object, False), (index of a ``<``, True), or
        (-1, False) when ``text`` ran out first."""
        structure = _STRUCTURE_OR_TAG if tags else _STRUCTURE
        end = len(text)
        while pos < end:
            if self.escaped:
                self.escaped = False
                pos += 1
                continue
            found = (_IN_STRING if self.in_string else structure).search(text, pos)
            if found is None:
                return -1, False
            pos = found.start()
            char = text[pos]
            if self.in_string:
                if char == "\\":
                    self.escaped = True
                else:
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char == "{":
                self.depth += 1
            elif char == "}":
                self.depth -= 1
                if self.depth <= 0:
                    return pos + 1, False
            else:
                return pos, True
            pos += 1
        return -1, False


class _Head:
    """Matches ``{"name": "…", "arguments": {`` one character at a time."""

    __slots__ = ("escaped", "name", "offset", "step")

    def __init__(self) -> None:
        self.step = 0
        self.offset = 0  # within a literal token, or 1 once inside the name's string
        self.name: list[str] = []
        self.escaped = False

    def feed(self, char: str) -> bool | None:
        """True: the head is complete (``char`` opened the arguments); False: not a streaming call; None: more."""
        token = _HEAD[self.step]
        if token == "STR":
            if self.offset == 0:
                if char in _WHITESPACE:
                    return None
                if char != '"':
                    return False
                self.offset = 1
                return None
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                return self._next()
            self.name.append(char)
            return None
        if self.offset == 0 and char in _WHITESPACE and self.step:
            return None
        if char != token[self.offset]:
            return False
        self.offset += 1
        return self._next() if self.offset == len(token) else None

    def _next(self) -> bool | None:
        self.step += 1
        self.offset = 0
        return True if self.step == len(_HEAD) else None


class _State(enum.Enum):
    TEXT = "text"
    OPENED = "opened"  # after <tool_call>: whitespace, then an object or not
    HEAD = "head"  # the object's start, while it may be a streaming call
    ARGUMENTS = "arguments"  # a streaming call's arguments object
    CLOSING = "closing"  # after the arguments: the object's closing brace, or more members
    REST = "rest"  # more members after the arguments (skipped)
    WHOLE = "whole"  # an object in another order: kept until it closes
    AFTER = "after"  # a call ended: its closing tag, if the model writes one


class ToolCallStream:
    """One choice's content, piece by piece, as the deltas to send instead: ``{"content": …}`` and
    ``{"tool_calls": [{index, id, type, function: {name, arguments}}]}`` fragments."""

    __slots__ = ("buffer", "calls", "fenced", "head", "pending", "raw", "scanner", "spaces", "state")

    def __init__(self) -> None:
        self.state = _State.TEXT
        self.buffer = ""  # text not handled yet (a possible start of a tag or a fence, or a new piece)
        self.calls = 0  # calls started so far (the next one's index)
        self.fenced = False  # inside a fenced code block
        self.pending = ""  # whitespace at the end of the content, sent when more text follows
        self.spaces = ""  # whitespace after <tool_call>
        self.raw: list[str] = []  # the call object's text so far (HEAD, WHOLE)
        self.head = _Head()
        self.scanner = _Scanner()

    def feed(self, text: str) -> list[JSON]:
        self.buffer += text
        out: list[JSON] = []
        while self.buffer and self._step(out):
            pass
        return out

    def end(self) -> list[JSON]:
        """The stream ended: what is still held goes out as the text it was (a call whose name went out has sent
        its arguments as far as they were written)."""
        out: list[JSON] = []
        if self.state is _State.TEXT:
            self._text(self.buffer, out)
        elif self.state in (_State.OPENED, _State.HEAD, _State.WHOLE):
            self._text(OPEN + self.spaces + "".join(self.raw) + self.buffer, out)
        self.buffer, self.raw, self.state = "", [], _State.TEXT
        if self.pending and not self.calls:
            out.append({"content": self.pending})
        self.pending = ""
        return out

    # --- the states -----------------------------------------------------------------------------------------

    def _step(self, out: list[JSON]) -> bool:
        """Handle what the buffer holds in the current state; False when more text is needed."""
        if self.state is _State.TEXT:
            return self._in_text(out)
        if self.state is _State.OPENED:
            return self._opened(out)
        if self.state is _State.HEAD:
            return self._in_head(out)
        if self.state is _State.ARGUMENTS:
            return self._in_arguments(out)
        if self.state is _State.CLOSING:
            return self._closing()
        if self.state is _State.REST:
            return self._in_rest()
        if self.state is _State.WHOLE:
            return self._in_whole(out)
        return self._after()

    def _in_text(self, out: list[JSON]) -> bool:
        buffer, pos = self.buffer, 0
        while True:
            found = (_FENCE_MARK if self.fenced else _TEXT_MARK).search(buffer, pos)
            if found is None or (found.group()[0] == "`" and found.end() == len(buffer)):
                break  # (a run of backticks at the end may grow)
            if found.group()[0] == "`":
                self.fenced = not self.fenced
                self._text(buffer[pos:found.end()], out)
                pos = found.end()
                continue
            self._text(buffer[pos:found.start()], out)
            self.buffer = buffer[found.end():]
            self.state, self.spaces = _State.OPENED, ""
            return True
        rest = buffer[pos:]
        held = len(rest) - len(rest.rstrip("`"))
        if not self.fenced:
            held = max(held, _held_prefix(rest, OPEN))
        self._text(rest[:len(rest) - held], out)
        self.buffer = rest[len(rest) - held:]
        return False

    def _opened(self, out: list[JSON]) -> bool:
        stripped = self.buffer.lstrip(_WHITESPACE)
        self.spaces += self.buffer[:len(self.buffer) - len(stripped)]
        self.buffer = stripped
        if not stripped:
            return False
        if stripped[0] != "{":  # not a call: the tag was text
            self._text(OPEN + self.spaces, out)
            self.state = _State.TEXT
            return True
        self.state, self.head, self.raw = _State.HEAD, _Head(), []
        return True

    def _in_head(self, out: list[JSON]) -> bool:
        for index, char in enumerate(self.buffer):
            verdict = self.head.feed(char)
            if verdict is None:
                continue
            seen = "".join(self.raw) + self.buffer[:index + 1]
            name = _string("".join(self.head.name)) if verdict else None
            if not name:  # not a streaming call (or an empty or invalid name): the object is kept whole
                self.buffer, self.raw = seen + self.buffer[index + 1:], []
                self.state, self.scanner = _State.WHOLE, _Scanner()
                return True
            out.append({"tool_calls": [{"index": self.calls, "id": call_id(), "type": "function",
                                        "function": {"name": name, "arguments": ""}}]})
            self.calls += 1
            self.buffer = self.buffer[index:]  # from the arguments' opening brace
            self.state, self.scanner, self.raw = _State.ARGUMENTS, _Scanner(), []
            return True
        self.raw.append(self.buffer)
        self.buffer = ""
        return False

    def _in_arguments(self, out: list[JSON]) -> bool:
        buffer, pos = self.buffer, 0
        while True:
            end, tag = self.scanner.scan(buffer, pos, tags=True)
            if end < 0:
                self._arguments(buffer, out)
                self.buffer = ""
                return False
            if not tag:  # the arguments object closed
                self._arguments(buffer[:end], out)
                self.buffer = buffer[end:]
                self.state = _State.CLOSING
                return True
            if buffer.startswith(CLOSE, end):  # the call's tag before its arguments closed: it ends here
                self._arguments(buffer[:end], out)
                self.buffer = buffer[end + len(CLOSE):]
                self.state = _State.TEXT
                return True
            if CLOSE.startswith(buffer[end:]):  # maybe the tag: wait for the rest
                self._arguments(buffer[:end], out)
                self.buffer = buffer[end:]
                return False
            pos = end + 1

    def _closing(self) -> bool:
        stripped = self.buffer.lstrip(_WHITESPACE)
        self.buffer = stripped
        if not stripped:
            return False
        if stripped[0] == "}":
            self.buffer, self.state = stripped[1:], _State.AFTER
        elif stripped[0] == ",":
            self.buffer, self.state, self.scanner = stripped[1:], _State.REST, _Scanner(depth=1)
        else:  # neither: the model left the object (and its tag) unfinished; what follows is text
            self.state = _State.TEXT
        return True

    def _in_rest(self) -> bool:
        buffer, pos = self.buffer, 0
        while True:
            end, tag = self.scanner.scan(buffer, pos, tags=True)
            if end < 0:
                self.buffer = ""
                return False
            if not tag:
                self.buffer = buffer[end:]
                self.state = _State.AFTER
                return True
            if buffer.startswith(CLOSE, end):
                self.buffer = buffer[end + len(CLOSE):]
                self.state = _State.TEXT
                return True
            if CLOSE.startswith(buffer[end:]):
                self.buffer = buffer[end:]
                return False
            pos = end + 1

    def _in_whole(self, out: list[JSON]) -> bool:
        buffer, pos = self.buffer, 0
        while True:
            end, tag = self.scanner.scan(buffer, pos, tags=True)
            if end < 0:
                self.raw.append(buffer)
                self.buffer = ""
                return False
            if tag:
                if buffer.startswith(CLOSE, end):  # the tag closed inside the object: it was text
                    cut = end + len(CLOSE)
                    self._text(OPEN + self.spaces + "".join(self.raw) + buffer[:cut], out)
                    self.buffer, self.raw, self.state = buffer[cut:], [], _State.TEXT
                    return True
                if CLOSE.startswith(buffer[end:]):
                    self.raw.append(buffer[:end])
                    self.buffer = buffer[end:]
                    return False
                pos = end + 1
                continue
            text = "".join(self.raw) + buffer[:end]
            self.buffer, self.raw = buffer[end:], []
            parsed = parse_call(text)
            if parsed is None:  # an object, but not a call
                self._text(OPEN + self.spaces + text, out)
                self.state = _State.TEXT
                return True
            out.append({"tool_calls": [{"index": self.calls, "id": call_id(), "type": "function",
                                        "function": {"name": parsed[0], "arguments": parsed[1]}}]})
            self.calls += 1
            self.state = _State.AFTER
            return True

    def _after(self) -> bool:
        stripped = self.buffer.lstrip(_WHITESPACE)
        if not stripped:
            self.buffer = ""
            return False
        if stripped.startswith(CLOSE):
            self.buffer = stripped[len(CLOSE):]
        elif CLOSE.startswith(stripped):
            self.buffer = stripped
            return False
        else:  # text after the call without its tag: the call ended there
            self.buffer = stripped
        self.state = _State.TEXT
        return True

    # --- what goes out ----------------------------------------------------------------------------------------

    def _text(self, text: str, out: list[JSON]) -> None:
        if not text:
            return
        kept = text.rstrip(_WHITESPACE)
        if not kept:
            self.pending += text
            return
        out.append({"content": self.pending + kept})
        self.pending = text[len(kept):]

    def _arguments(self, text: str, out: list[JSON]) -> None:
        if text:
            out.append({"tool_calls": [{"index": self.calls - 1, "function": {"arguments": text}}]})


def extract(text: str) -> tuple[str | None, list[JSON]]:
    """A whole answer's text: what stays content (None when only calls remain) and the tool calls — exactly
    what a stream of the same text makes."""
    stream = ToolCallStream()
    content: list[str] = []
    calls: list[JSON] = []
    for delta in stream.feed(text) + stream.end():
        if "content" in delta:
            content.append(delta["content"])
        for fragment in delta.get("tool_calls", ()):
            function = fragment["function"]
            if "id" in fragment:
                calls.append({"id": fragment["id"], "type": "function",
                              "function": {"name": function["name"], "arguments": function["arguments"]}})
            else:
                calls[fragment["index"]]["function"]["arguments"] += function["arguments"]
    if calls and not content:
        return None, calls
    return "".join(content), calls


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


class ToolCallChunks:
    """A chat-completions stream's chunks through one :class:`ToolCallStream` per choice (``n`` > 1 gives
    several): content deltas rewritten, as many chunks out as the rewrite needs, ``finish_reason``
    ``tool_calls`` once a call went out on that choice."""

    __slots__ = ("last", "streams")

    def __init__(self) -> None:
        self.streams: dict[int, ToolCallStream] = {}
        self.last: dict[int, tuple[JSON, JSON]] = {}  # per choice: the latest (chunk, choice), for the end's flush

    def chunk(self, data: JSON) -> list[JSON]:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            return [data]
        out: list[JSON] = []
        for choice in choices:
            out += self._choice(data, choice)
        if "usage" in data:  # one chunk became several: the usage once, on the last
            out = [{k: v for k, v in chunk.items() if k != "usage"} for chunk in out[:-1]] + out[-1:]
        return out

    def _choice(self, data: JSON, choice: JSON) -> list[JSON]:
        index = choice.get("index", 0)
        index = index if isinstance(index, int) else 0
        stream = self.streams.get(index)
        if stream is None:
            stream = self.streams[index] = ToolCallStream()
        self.last[index] = (data, choice)
        found = choice.get("delta")
        delta: JSON = found if isinstance(found, dict) else {}
        content = delta.get("content")
        out: list[JSON] = []
        if isinstance(content, str) and content:
            deltas = stream.feed(content)
            rest = {k: v for k, v in delta.items() if k != "content"}
            if rest:  # the role, say: keep it on its own chunk
                out.append(_with(data, choice, {**rest, "content": ""}, None))
            out += [_with(data, choice, d, None) for d in deltas]
        finish = choice.get("finish_reason")
        if finish is not None:
            out += [_with(data, choice, d, None) for d in stream.end()]
            if finish == "stop" and stream.calls:
                finish = "tool_calls"
            out.append(_with(data, choice, {}, finish))
        elif not (isinstance(content, str) and content):
            out.append(_with(data, choice, delta, None))
        return out

    def end(self) -> list[JSON]:
        """The stream ended without a finish chunk: flush what is held, choice by choice."""
        out: list[JSON] = []
        for index, stream in self.streams.items():
            data, choice = self.last[index]
            out += [_with(data, choice, d, None) for d in stream.end()]
        return out


def _with(chunk: JSON, choice: JSON, delta: JSON, finish: str | None) -> JSON:
    return {**chunk, "choices": [{**choice, "delta": delta, "finish_reason": finish}]}
