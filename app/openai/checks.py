"""Checking an OpenAI request body: parsed once (orjson), and the few fields the gateway reads or the runtime
mishandles checked strictly (OpenAI's types and ranges), so a bad request gets a precise 400 instead of an
upstream 500. Every other field is forwarded untouched."""

from __future__ import annotations

from typing import Any

import orjson

from app.core.errors import bad_request

JSON = dict[str, Any]
_NUMBER = (int, float)


def parse_body(raw: bytes) -> JSON:
    if not raw.strip():
        raise bad_request("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return data


def check_type(body: JSON, key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise bad_request(f"'{key}' must be {what}.", param=key, code="invalid_type")
    if not isinstance(value, kinds):
        raise bad_request(f"'{key}' must be {what}.", param=key, code="invalid_type")
    return value


def check_range(body: JSON, key: str, low: float, high: float | None = None, integer: bool = False) -> None:
    kinds = int if integer else _NUMBER
    what = "an integer" if integer else "a number"
    value = check_type(body, key, kinds, what)
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bound = f"≥ {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise bad_request(f"'{key}' must be {bound}, got {value}.", param=key, code="invalid_value")


def check_common(body: JSON) -> None:
    """The fields every generating endpoint shares."""
    check_type(body, "model", str, "a string")
    check_type(body, "stream", bool, "a boolean")
    check_range(body, "temperature", 0, 2)
    check_range(body, "top_p", 0, 1)
    check_range(body, "presence_penalty", -2, 2)
    check_range(body, "frequency_penalty", -2, 2)
    check_type(body, "seed", int, "an integer")


def check_sampling(body: JSON, *, single_choice: bool) -> None:
    """Chat and completions: output budgets, ``n``, ``stream_options`` and ``stop``."""
    check_common(body)
    check_range(body, "max_tokens", 1, integer=True)
    check_range(body, "max_completion_tokens", 1, integer=True)
    check_range(body, "n", 1, 128, integer=True)
    options = check_type(body, "stream_options", dict, "an object")
    if options is not None and not isinstance(options.get("include_usage", False), bool):
        raise bad_request("'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise bad_request("'stop' must be a string or a list of strings.", param="stop", code="invalid_type")
    if single_choice and (body.get("n") or 1) > 1:
        raise bad_request("'n' > 1 is not supported by this upstream (it would silently return one choice).",
                          param="n", code="unsupported_value")


def has_images(items: Any) -> bool:
    """Whether chat messages or Responses input items carry an image part."""
    if not isinstance(items, list):
        return False
    for item in items:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in ("image_url", "input_image") for part in content):
            return True
    return False


def texts_of(value: Any, out: list[str]) -> None:
    """The text in a prompt, an input or a message's content (strings, parts with ``text``), appended to ``out``."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                texts_of(item.get("text") if "text" in item else item.get("content"), out)
