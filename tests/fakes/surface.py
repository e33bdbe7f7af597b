"""The fake upstream's endpoints beyond chat: ``/v1/responses`` (JSON and typed SSE events, as Foundry Local
answers them), ``/v1/embeddings`` (deterministic unit vectors, usage 0 like Foundry Local) and
``/v1/audio/transcriptions`` (Foundry Local's JSON naming a file on its host, or an OpenAI multipart upload
on a plain OpenAI-compatible server). The text "heard" is the audio's size and name, so tests can check
what arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from tests.fakes.upstream import Connection

DIMENSIONS = 64
_FILENAME = re.compile(rb'name="file"; filename="([^"]*)"\r\nContent-Type: [^\r\n]*\r\n\r\n', re.IGNORECASE)


def _error(message: str, etype: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": etype}}


def _json_body(conn: Connection, raw: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        conn.write_json(400, _error("invalid JSON body"))
        return None
    conn.state.stats["requests"] += 1
    conn.state.stats["last_bodies"].append(body)
    return body


def _servable(conn: Connection, model: str) -> dict[str, Any] | None:
    """Known, and loaded where the fake plays Foundry Local: the fault queued for it ({} if none); else None,
    answered as the runtime would."""
    state = conn.state
    state.stats["by_model"][model] = state.stats["by_model"].get(model, 0) + 1
    if model not in state.models:
        conn.write_json(404, _error(f"Model not found: {model}"))
        return None
    if state.foundry and model not in state.loaded:
        conn.write_json(400, _error(f"Model not loaded: {model} must be loaded before inference"))
        return None
    fault = state.take_fault(model) or {}
    if fault.get("mode") == "status":
        status = int(fault.get("status", 500))
        conn.write_json(status, _error(f"injected HTTP {status}", "api_error" if status >= 500 else
                                       "invalid_request_error"))
        return None
    return fault


# --- /v1/responses ---------------------------------------------------------------------------------------------


async def responses(conn: Connection, raw: bytes) -> None:
    body = _json_body(conn, raw)
    if body is None or (fault := _servable(conn, model := str(body.get("model")))) is None:
        return
    cfg = conn.state.config
    stream = body.get("stream") is True
    failed = conn.state.foundry and body.get("max_output_tokens") is None
    message = "Requested output length exceeds the model's maximum context length"
    if failed and not stream:
        return conn.write_json(400, _error(message))
    if fault.get("mode") == "stream_error" and stream:  # Foundry Local's chat-style failure: 200, one event
        conn.write_head(200, "text/event-stream")
        conn.write_chunk(b"data: " + orjson.dumps(_error("injected failure", "server_error")) + b"\n\n")
        return conn.end_chunks()
    text = cfg["reply"] or f"Hello from {model}."
    words = text.split(" ")
    pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    rid = f"resp_{secrets.token_hex(16)}"  # unique, as the runtime's are: several fakes never collide
    usage = {"input_tokens": len(str(body.get("input")).split()), "output_tokens": len(pieces),
             "total_tokens": len(str(body.get("input")).split()) + len(pieces)}
    item = {"id": f"msg_{rid}", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    response = {"id": rid, "object": "response", "created_at": int(time.time()), "model": model,
                "status": "completed", "output": [item], "usage": usage, "error": None,
                "incomplete_details": None, "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"), "previous_response_id":
                    body.get("previous_response_id"), "parallel_tool_calls": True, "tool_choice": "auto",
                "tools": [], "text": {"format": {"type": "text"}}, "temperature": 1.0, "top_p": 1.0,
                "truncation": "disabled", "metadata": {}}
    if not stream:
        await asyncio.sleep(float(cfg["delay_ms"]) / 1000)
        return conn.write_json(200, response)
    conn.write_head(200, "text/event-stream")
    sequence = 0

    def send(kind: str, **fields: Any) -> None:
        nonlocal sequence
        data = orjson.dumps({"type": kind, "sequence_number": sequence, **fields})
        conn.write_chunk(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")
        sequence += 1

    started = {**response, "status": "in_progress", "output": [], "usage": None}
    send("response.created", response=started)
    send("response.in_progress", response=started)
    if failed:
        send("response.failed", response={**started, "status": "failed",
                                          "error": {"code": "server_error", "message": message}})
        conn.write_chunk(b"data: [DONE]\n\n")
        return conn.end_chunks()
    send("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []})
    send("response.content_part.added", item_id=item["id"], output_index=0, content_index=0,
         part={"type": "output_text", "text": "", "annotations": []})
    for piece in pieces:
        await asyncio.sleep(float(cfg["chunk_delay_ms"]) / 1000)
        if conn.closed:
            conn.state.stats["streams_cancelled"] += 1
            return
        send("response.output_text.delta", item_id=item["id"], output_index=0, content_index=0, delta=piece)
    send("response.output_text.done", item_id=item["id"], output_index=0, content_index=0, text=text)
    send("response.content_part.done", item_id=item["id"], output_index=0, content_index=0,
         part={"type": "output_text", "text": text, "annotations": []})
    send("response.output_item.done", output_index=0, item=item)
    send("response.completed", response=response)
    conn.write_chunk(b"data: [DONE]\n\n")
    conn.end_chunks()
    conn.state.stats["streams_completed"] += 1


# --- /v1/embeddings ---------------------------------------------------------------------------------------------


def vector(text: str) -> list[float]:
    """A unit vector that depends only on the text's words (bag of words, case and punctuation ignored): texts
    with the same words point the same way, texts sharing most words nearly so — a deterministic stand-in for an
    embedding model's sense of "close"."""
    values = [0.0] * DIMENSIONS
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        values[digest[0] % DIMENSIONS] += 1.0 if digest[1] & 1 else -1.0
    if not any(values):
        values[0] = 1.0
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def embeddings(conn: Connection, raw: bytes) -> None:
    body = _json_body(conn, raw)
    if body is None or _servable(conn, model := str(body.get("model"))) is None:
        return
    value = body.get("input")
    inputs = value if isinstance(value, list) else [value]
    if not inputs or not all(isinstance(item, str) for item in inputs):
        return conn.write_json(400, _error("input must be a string or a list of strings"))
    conn.write_json(200, {"object": "list", "model": model, "usage": {"prompt_tokens": 0, "total_tokens": 0},
                          "data": [{"object": "embedding", "index": i, "embedding": vector(text)}
                                   for i, text in enumerate(inputs)]})


# --- /v1/audio/transcriptions -----------------------------------------------------------------------------------


def transcriptions(conn: Connection, raw: bytes, content_type: str) -> None:
    stats = conn.state.stats
    if content_type.startswith("multipart/form-data"):
        found = _FILENAME.search(raw)
        model = re.search(rb'name="model"\r\n\r\n([^\r]*)\r\n', raw)
        if found is None or model is None:
            return conn.write_json(400, _error("multipart body without a file or a model"))
        audio = raw[found.end():raw.rfind(b"\r\n--")]
        stats["last_bodies"].append({"multipart": True, "model": model.group(1).decode(),
                                     "filename": found.group(1).decode(), "size": len(audio)})
        if _servable(conn, model.group(1).decode()) is None:
            return
        return conn.write_json(200, {"text": f"heard {len(audio)} bytes of {found.group(1).decode()}"})
    body = _json_body(conn, raw)
    if body is None or _servable(conn, str(body.get("model"))) is None:
        return
    path = str(body.get("filename", ""))
    if not os.path.isfile(path):  # as the runtime: it reads the file from its own disk
        return conn.write_json(500, _error(f"Inference failed: cannot open audio file '{path}'", "server_error"))
    with open(path, "rb") as audio:
        size = len(audio.read())
    conn.write_json(200, {"text": f"heard {size} bytes of {os.path.basename(path)}"})
