"""The access log: one JSON line per request on stderr (``GATEWAY_ACCESS_LOG``)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import IO, Any

import orjson

from app.core.metrics import status_class
from app.proxy.outcome import Outcome


class AccessLog:
    """Each line goes out in one ``write`` to the stream's file descriptor when it has one (no text layer on
    the hot path: it cost as much as building the line), else through the stream."""

    __slots__ = ("fd", "log_prompts", "out")

    def __init__(self, out: IO[str], log_prompts: bool) -> None:
        self.out = out
        self.log_prompts = log_prompts
        try:
            out.flush()  # what the text layer holds goes first
            self.fd: int | None = out.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
            self.fd = None

    def observe(self, outcome: Outcome) -> None:
        usage = outcome.usage or {}
        line: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": outcome.call.request_id,
            "route": outcome.call.endpoint,
            "task": outcome.task,
            "model": outcome.model,
            "upstream_id": outcome.upstream_id or None,
            "status": outcome.status,
            "outcome": status_class(outcome.status, outcome.aborted),
            "stream": outcome.stream,
            "reason": outcome.reason,
            "fallbacks": outcome.fallbacks,
            "duration_ms": round(outcome.duration * 1000, 3),
            "ttft_ms": round(outcome.ttft * 1000, 3) if outcome.ttft else None,
            "upstream_ms": round(outcome.upstream_wait * 1000, 3),
            "queue_ms": round(outcome.queue_wait * 1000, 3),
            "load_ms": round(outcome.load_wait * 1000, 3),
            "overhead_ms": round(outcome.overhead * 1000, 3),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
        }
        if usage.get("estimated"):
            line["usage_estimated"] = True  # the stream was cut before the upstream's usage came
        if outcome.cache is not None:
            line["cache"] = outcome.cache
        if outcome.trace_id is not None:
            line["trace_id"] = outcome.trace_id
        if outcome.error:
            line["error"] = outcome.error[:300]
        if self.log_prompts and outcome.body is not None:
            line["request"] = outcome.body
        data = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
        with contextlib.suppress(OSError, ValueError):
            if self.fd is None:
                self.out.write(data.decode())
                return
            while data:  # a pipe may take a long line in parts
                data = data[os.write(self.fd, data):]
