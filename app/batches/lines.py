"""A batch's input file, checked before anything runs: one JSON object a line — ``custom_id`` (unique),
``method`` ``POST``, ``url`` the batch's endpoint, ``body`` the request — and optionally, this gateway's own,
``task`` (the line's ``X-Task``, over the batch's ``metadata.task``) and ``cache``: ``"no-store"`` (the line's
``Cache-Control``: answered by the model, as ``foundry-gateway bench --batch`` asks). Every problem is reported
with its line number, in OpenAI's batch error shape; a file with any is not run. The file is read a line at a time
(:class:`Checker`), never whole: what is kept is the ids seen and the problems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.openai import ENDPOINTS

JSON = dict[str, Any]
# the paths a batch may call: the endpoints of app.openai's one table that take a JSON body
BATCHABLE = tuple(endpoint.path for endpoint in ENDPOINTS if endpoint.batchable)
MAX_ERRORS = 100  # reported; a file with more is failed all the same
MAX_CUSTOM_ID = 512
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Line:
    index: int  # position among the file's requests, from 0 (blank lines skipped)
    number: int  # line number in the file, from 1
    custom_id: str
    body: JSON
    task: str | None = None
    no_store: bool = False  # the line's "cache": "no-store": never answered from, nor kept in, the response cache


def error(code: str, message: str, line: int | None = None, param: str | None = None) -> JSON:
    return {"code": code, "message": message, "param": param, "line": line}


class Lines:
    """Numbers the lines of a file as they are read (a UTF-8 byte-order mark before the first is no part of it)
    and parses each; blank lines are skipped and count only toward the line numbers."""

    def __init__(self, endpoint: str, max_line_bytes: int) -> None:
        self.endpoint = endpoint
        self.max_line_bytes = max_line_bytes
        self.number = 0
        self.count = 0  # requests so far

    def parse(self, text: bytes) -> Line | JSON | None:
        """The next line's request, its problem, or None for a blank line."""
        self.number += 1
        if self.number == 1 and text.startswith(BOM):
            text = text[len(BOM):]
        if not text.strip():
            return None
        if len(text) > self.max_line_bytes:
            self.count += 1
            return error("line_too_long", f"Line {self.number} is larger than {self.max_line_bytes} bytes, the most a "
                         "request body may have (GATEWAY_MAX_BODY_BYTES).", self.number)
        found = _line(text, self.number, self.endpoint, self.count)
        self.count += 1
        return found


class Checker:
    """The checks of a whole file, fed a line at a time: its problems, and how many requests it has."""

    def __init__(self, endpoint: str, max_lines: int, max_line_bytes: int) -> None:
        self.lines = Lines(endpoint, max_line_bytes)
        self.max_lines = max_lines
        self.errors: list[JSON] = []
        self.problems = 0
        self._seen: set[str] = set()

    def add(self, text: bytes) -> Line | None:
        found = self.lines.parse(text)
        if isinstance(found, Line) and found.custom_id in self._seen:
            found = error("duplicate_custom_id", f"Line {found.number}: custom_id '{found.custom_id[:100]}' is used by "
                          "an earlier line; each must be unique.", found.number, "custom_id")
        if isinstance(found, Line):
            self._seen.add(found.custom_id)
            return found
        if found is not None:
            self.problems += 1
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(found)
        return None

    def finish(self) -> list[JSON]:
        """Every problem of the file (an empty list: it may run)."""
        count = self.lines.count
        if not count:
            self.errors.append(error("empty_file", "The input file has no requests."))
        if count > self.max_lines:
            self.errors.append(error("too_many_requests", f"The input file has {count} requests; a batch takes at "
                                     f"most {self.max_lines} (GATEWAY_BATCH_MAX_LINES)."))
        return self.errors[:MAX_ERRORS]


def read_lines(raw: bytes, endpoint: str, max_lines: int, max_line_bytes: int = 1 << 30) -> tuple[list[Line],
                                                                                                 list[JSON]]:
    """The requests of a whole file in memory and its problems (the gateway itself reads files a line at a time)."""
    checker = Checker(endpoint, max_lines, max_line_bytes)
    lines = [line for text in raw.split(b"\n") if (line := checker.add(text)) is not None]
    return lines, checker.finish()


def _line(text: bytes, number: int, endpoint: str, index: int) -> Line | JSON:
    try:
        item = orjson.loads(text)
    except orjson.JSONDecodeError:
        return error("invalid_json_line", f"Line {number} is not valid JSON.", number)
    if not isinstance(item, dict):
        return error("invalid_json_line", f"Line {number} must be a JSON object.", number)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip():
        return error("missing_required_parameter", f"Line {number} has no custom_id.", number, "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID:
        return error("invalid_value", f"Line {number}: custom_id is longer than {MAX_CUSTOM_ID} characters.", number,
                     "custom_id")
    method = item.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        return error("invalid_method", f"Line {number}: method must be POST.", number, "method")
    url = item.get("url")
    if url != endpoint:
        shown = str(url)[:100] if url is not None else "missing"
        return error("invalid_url", f"Line {number}: url {shown} is not the batch's endpoint {endpoint}.", number,
                     "url")
    body = item.get("body")
    if not isinstance(body, dict):
        return error("invalid_request", f"Line {number}: body must be a JSON object (the request).", number, "body")
    task = item.get("task")
    if task is not None and (not isinstance(task, str) or not task.strip()):
        return error("invalid_request", f"Line {number}: task must be a non-empty string.", number, "task")
    cache = item.get("cache")
    if cache not in (None, "no-store"):
        return error("invalid_value", f"Line {number}: cache may only be \"no-store\".", number, "cache")
    return Line(index, number, custom_id, body, task, cache == "no-store")
