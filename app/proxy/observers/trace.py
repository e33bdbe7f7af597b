"""A request's trace ended with what it did: the GenAI semantic conventions' attributes (``gen_ai.*``) and the
gateway's own (``gateway.*``); the prompt only with ``GATEWAY_LOG_PROMPTS``."""

from __future__ import annotations

from typing import Any

import orjson

from app.core.tracing import RequestTrace
from app.proxy.outcome import Outcome

_INT64 = 2**63


class Trace:
    __slots__ = ("log_prompts",)

    def __init__(self, log_prompts: bool) -> None:
        self.log_prompts = log_prompts

    def observe(self, outcome: Outcome, trace: RequestTrace) -> None:
        if not trace.recording:  # the sampler dropped it: its span ends, nothing is built for it
            trace.finish({}, name=None, error=None, client_left=False)
            return
        error = None  # a server span is an error for 5xx (or no answer), not for the client's 4xx
        if not outcome.aborted and (outcome.status >= 500 or outcome.status == 0):
            error = outcome.error or f"HTTP {outcome.status}"
        trace.finish(attributes(outcome, self.log_prompts), name=outcome.model, error=error,
                     client_left=outcome.aborted)


def attributes(outcome: Outcome, log_prompts: bool) -> dict[str, Any]:
    body: dict[str, Any] = outcome.body or {}
    found: dict[str, Any] = {"http.response.status_code": outcome.status, "gateway.stream": outcome.stream}
    requested = body.get("model")
    if isinstance(requested, str):
        found["gen_ai.request.model"] = requested
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(name), int) and -_INT64 <= body[name] < _INT64:  # OTLP ints are 64-bit
            found["gen_ai.request.max_tokens"] = body[name]
            break
    if isinstance(body.get("temperature"), int | float):
        found["gen_ai.request.temperature"] = float(body["temperature"])
    if outcome.upstream_id:
        found["gen_ai.response.model"] = outcome.upstream_id
    usage = outcome.usage or {}
    for key, name in (("prompt_tokens", "input_tokens"), ("input_tokens", "input_tokens"),
                      ("completion_tokens", "output_tokens"), ("output_tokens", "output_tokens")):
        if isinstance(usage.get(key), int):
            found[f"gen_ai.usage.{name}"] = usage[key]
    if outcome.ttft:
        found["gen_ai.server.time_to_first_token"] = round(outcome.ttft, 6)
    caller, cache = outcome.call.key, outcome.cache
    for name, value in (("gateway.task", outcome.task), ("gateway.route.reason", outcome.reason),
                        ("gateway.model", outcome.model), ("gateway.node", outcome.node),
                        ("gateway.key", caller.name if caller is not None else None),
                        ("gateway.cache", cache.value if cache is not None else None),
                        ("gateway.priority", outcome.call.priority), ("gateway.fallbacks", outcome.fallbacks or None)):
        if value is not None:
            found[name] = value
    if outcome.queue_wait:
        found["gateway.queue_wait_s"] = round(outcome.queue_wait, 6)
    if outcome.load_wait:
        found["gateway.load_wait_s"] = round(outcome.load_wait, 6)
    if outcome.error:
        found["error.type"] = outcome.cause or "error"
    if log_prompts and body:
        prompt = body.get("messages") or body.get("input") or body.get("prompt")
        if prompt is not None:
            found["gen_ai.prompt"] = orjson.dumps(prompt).decode()[:8000]
    return found
