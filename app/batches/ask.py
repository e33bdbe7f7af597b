"""One line of a batch as a request to the gateway itself (``app.proxy.inprocess``): at the batch priority class,
as the key that created the batch (its allow-lists and quotas), with the line's task. A 429 (the key's quota spent
for now) or a 503 (no model ready yet) makes the line wait and ask again — about two minutes at most — before it
counts as the line's answer."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from typing import Any

import orjson

from app.access.middleware import Caller
from app.batches.lines import Line
from app.openai import BY_PATH
from app.proxy.handler import Proxy
from app.proxy.inprocess import ask

log = logging.getLogger("foundry_gateway.batches")
JSON = dict[str, Any]
_DROPPED = ("stream", "stream_options")  # a batch line's answer is whole, never a stream
_WAIT_AND_RETRY = (429, 503)
_ATTEMPTS = 8


async def run_line(proxy: Proxy, task_header: str, batch: JSON, line: Line, caller: Caller | None) -> JSON:
    """The line's result as its output file has it: ``{id, custom_id, response: {status_code, request_id, body},
    error}`` (``caller`` None: the key that created the batch is gone)."""
    request_id = f"{batch['id']}-{line.index}"
    result: JSON = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": line.custom_id, "response": None,
                    "error": None}
    if caller is None:
        result["error"] = {"code": "invalid_api_key", "message": f"The key that created this batch "
                           f"('{batch['x_owner']}') is no longer in the keys file."}
        return result
    body = {k: v for k, v in line.body.items() if k not in _DROPPED}
    headers = [(b"x-priority", b"batch"), (b"x-request-id", request_id.encode())]
    task = line.task or (batch.get("metadata") or {}).get("task")
    if task:
        headers.append((task_header.lower().encode(), task.encode("latin-1", "replace")))
    if line.no_store:
        headers.append((b"cache-control", b"no-store"))
    delay = 1.0
    for attempt in itertools.count(1):
        try:
            answer = await ask(proxy, BY_PATH[batch["endpoint"]], orjson.dumps(body), headers, caller)
        except Exception as exc:  # the proxy answers every failure itself: a bug, kept as the line's error
            log.exception("batch %s line %d failed", batch["id"], line.index)
            result["error"] = {"code": "internal_error", "message": f"Internal gateway error: {exc.__class__.__name__}"}
            return result
        if answer.status not in _WAIT_AND_RETRY or attempt >= _ATTEMPTS or time.time() + delay >= batch["expires_at"]:
            break
        # the key's quota is spent for now, or no model can answer yet: the line waits, it does not fail
        await asyncio.sleep(_retry_after(answer.headers) or delay)
        delay = min(delay * 2, 30.0)
    try:
        parsed: Any = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        parsed = {"error": {"message": answer.body.decode("utf-8", "replace")[:500], "type": "api_error"}}
    result["response"] = {"status_code": answer.status, "request_id": request_id, "body": parsed}
    return result


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                return min(max(float(value), 0.1), 60.0)
            except ValueError:
                return None
    return None
