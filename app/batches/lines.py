"""A batch's input file, checked before anything runs: one JSON object a line — ``custom_id`` (unique),
``method`` ``POST``, ``url`` the batch's endpoint, ``body`` the request — and optionally ``task`` (this
gateway's: the line's ``X-Task``, over the batch's ``metadata.task``). Every problem is reported with its line
number, in OpenAI's batch error shape; a file with any is not run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

JSON = dict[str, Any]
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")
MAX_ERRORS = 100  # reported; a file with more is failed all the same


@dataclass(frozen=True, slots=True)
class Line:
    index: int  # position among the file's requests, from 0 (blank lines skipped)
    number: int  # line number in the file, from 1
    custom_id: str
    body: JSON
    task: str | None = None


def error(code: str, message: str, line: int | None = None, param: str | None = None) -> JSON:
    return {"code": code, "message": message, "param": param, "line": line}


def read_lines(raw: bytes, endpoint: str, max_lines: int) -> tuple[list[Line], list[JSON]]:
    """The requests of an input file and its problems (an empty list: it may run)."""
    lines: list[Line] = []
    errors: list[JSON] = []
    seen: set[str] = set()
    for number, text in enumerate(raw.split(b"\n"), start=1):
        if not text.strip():
            continue
        found = _line(text, number, endpoint, len(lines), seen)
        if isinstance(found, Line):
            seen.add(found.custom_id)
            lines.append(found)
        else:
            errors.append(found)
    if not lines and not errors:
        errors.append(error("empty_file", "The input file has no requests."))
    if len(lines) > max_lines:
        errors.append(error("too_many_requests", f"The input file has {len(lines)} requests; a batch takes at most "
                            f"{max_lines} (GATEWAY_BATCH_MAX_LINES)."))
    return lines, errors[:MAX_ERRORS]


def _line(text: bytes, number: int, endpoint: str, index: int, seen: set[str]) -> Line | JSON:
    try:
        item = orjson.loads(text)
    except orjson.JSONDecodeError:
        return error("invalid_json_line", f"Line {number} is not valid JSON.", number)
    if not isinstance(item, dict):
        return error("invalid_json_line", f"Line {number} must be a JSON object.", number)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip():
        return error("missing_required_parameter", f"Line {number} has no custom_id.", number, "custom_id")
    if custom_id in seen:
        return error("duplicate_custom_id", f"Line {number}: custom_id '{custom_id[:100]}' is used by an earlier "
                     "line; each must be unique.", number, "custom_id")
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
    return Line(index, number, custom_id, body, task)
