"""Request validation and the rewrites that make Foundry Local behave like the OpenAI API.

The gateway reads only a few fields; those are checked strictly (OpenAI's types and ranges) so a bad
request gets a precise 400 instead of an upstream 500. Every other field is forwarded untouched.

Quirks smoothed here (see shared notes on Foundry Local):
- no ``max_tokens`` → Foundry Local budgets the whole context and rejects the request, so a default
  (per model, clamped to its context length) is added;
- ``/v1/completions`` does not exist upstream → translated to chat completions and back;
- usage in streams only with ``stream_options.include_usage`` → always asked for (token metrics),
  and the extra chunk is stripped again when the client did not ask.
"""

from __future__ import annotations

import time
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


def validate(body: JSON, route: str, *, single_choice: bool) -> None:
    """Check the fields the gateway reads or that the upstream mishandles."""
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
    if route == "chat":
        _validate_messages(body)
    else:
        _validate_prompt(body)


def _validate_messages(body: JSON) -> None:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list.", param="messages", code="invalid_value")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{i}]' must be an object.", param=f"messages[{i}]", code="invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise bad_request(f"'messages[{i}].role' must be a non-empty string.", param=f"messages[{i}].role",
                              code="invalid_value")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"'messages[{i}].content' must be a string, a list of parts or null.",
                              param=f"messages[{i}].content", code="invalid_type")


def _validate_prompt(body: JSON) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required.", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return
    if not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string (or a list with one string).", param="prompt",
                          code="invalid_value")


def wants_usage(body: JSON) -> bool:
    options = body.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


def prepare_upstream_body(
    body: JSON, *, upstream_id: str, stream: bool, default_max_tokens: int | None, to_chat: bool
) -> bytes:
    """The body the upstream gets: routed model, default max_tokens, usage asked for, maybe as chat."""
    out = completion_to_chat(body) if to_chat else dict(body)
    out["model"] = upstream_id
    if default_max_tokens is not None and out.get("max_tokens") is None and out.get("max_completion_tokens") is None:
        out["max_tokens"] = default_max_tokens
    if stream:
        options = out.get("stream_options")
        out["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {
            "include_usage": True
        }
    return orjson.dumps(out)


# --- /v1/completions ↔ /v1/chat/completions ---------------------------------------------------------

_COMPLETION_ONLY = ("prompt", "echo", "suffix", "best_of", "logprobs")


def completion_to_chat(body: JSON) -> JSON:
    if body.get("echo"):
        raise bad_request("'echo' is not supported by this upstream.", param="echo", code="unsupported_value")
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported by this upstream.", param="suffix", code="unsupported_value")
    prompt = body["prompt"]
    text = prompt[0] if isinstance(prompt, list) else prompt
    out = {k: v for k, v in body.items() if k not in _COMPLETION_ONLY}
    out["messages"] = [{"role": "user", "content": text}]
    return out


def chat_to_completion(data: JSON) -> JSON:
    """A chat.completion (or chunk) as a text_completion (or its chunk)."""
    choices = []
    for choice in data.get("choices") or []:
        part = choice.get("message") or choice.get("delta") or {}
        choices.append({
            "text": part.get("content") or "",
            "index": choice.get("index", 0),
            "logprobs": None,
            "finish_reason": choice.get("finish_reason"),
        })
    out: JSON = {
        "id": str(data.get("id") or f"cmpl-{int(time.time() * 1000)}").replace("chatcmpl", "cmpl", 1),
        "object": "text_completion",
        "created": data.get("created") or int(time.time()),
        "model": data.get("model", ""),
        "choices": choices,
    }
    if data.get("usage") is not None:
        out["usage"] = data["usage"]
    return out
