"""A fault-injecting OpenAI-compatible upstream for tests: a real HTTP server on 127.0.0.1.

Raw asyncio + httptools, one process, so it is cheap enough to sit behind load tests. It serves
``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` (JSON or SSE), ``/v1/responses``,
``/v1/embeddings`` and ``/v1/audio/transcriptions`` (``tests.fakes.surface``), the same under the
``/catalogs/local`` prefix, and with ``--foundry`` mimics Foundry Local's local-catalog management
(``/models/loaded``, ``/models/load/{alias}``, "Model not loaded", the max_tokens rejection and the
200-plus-error-event stream). Tests steer it out of band:

  POST /_config {chunks, chunk_delay_ms, ttft_ms, delay_ms, reply,   defaults for replies
                sse_style, manage_delay_ms, nagle, capacity, pieces}

``nagle``: write streams like Foundry Local's web server — Nagle's algorithm on, the head and each
event in its own small write — so a client that delays its ACKs waits ~40 ms for the first event.
``pieces``: a stream's content chunks exactly as listed (the reply is their concatenation).
``capacity``: a runtime with that many "cores": with more streams in flight each one slows down in
proportion (throughput flat past the knee), like a CPU-bound model server.
  POST /_fault  {mode, count, model, ...params}                       queue a fault
  POST /_reset                                                        clear faults, config, stats
  GET  /_stats                                                        what it saw

Fault modes: slow_first_byte(seconds), slow_first_event(seconds: the head at once, the first event
late: prompt processing), stall(after), reset(after), status(status, retry_after, seconds), garbage_sse,
wrong_content_type, huge(bytes), stream_error, close, delay_chunks(ms).

Run: ``python -m tests.fakes.upstream --port 0 --models a,b [--foundry] [--tls-cert C --tls-key K]
[--silent]``; it prints ``READY http://127.0.0.1:PORT`` once listening. ``--silent`` accepts connections
and never answers (an upstream that hangs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import deque
from types import TracebackType
from typing import Any

import httptools
import orjson

from tests.fakes import surface

DEFAULTS: dict[str, Any] = {"chunks": 4, "chunk_delay_ms": 0.0, "ttft_ms": 0.0, "delay_ms": 0.0, "reply": None,
                            "sse_style": "lf", "manage_delay_ms": 0.0, "nagle": False, "capacity": 0,
                            "pieces": None}
# How streams are framed: "lf" (the usual), "crlf", "cr", "done_nospace" (`data:[DONE]`),
# "unterminated" (no blank line after the last event), "multiline" (each JSON split over two data lines),
# "lone_unterminated" (one content event without its blank line, then the end: no [DONE]).
SSE_STYLES = ("lf", "crlf", "cr", "done_nospace", "unterminated", "multiline")
PREFIX = "/catalogs/local"
_VARIANT = re.compile(r"-generic-(cpu|gpu)$")


def alias_of(model_id: str) -> str:
    return _VARIANT.sub("", model_id.split(":")[0])


class State:
    def __init__(self, models: list[str], foundry: bool) -> None:
        self.models = models
        self.foundry = foundry
        self.loaded: set[str] = set()
        self.in_progress = 0  # streams being written now (survives /_reset: they are still running)
        self.json_in_progress = 0  # JSON answers being prepared now
        self.active_by_model: dict[str, int] = {}  # the same, per model (Foundry Local will not unload those)
        self.reset()

    def reset(self) -> None:
        self.loaded.clear()
        self.config = dict(DEFAULTS)
        self.faults: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {
            "requests": 0, "by_path": {}, "last_bodies": deque(maxlen=50), "streams_started": 0,
            "streams_completed": 0, "streams_cancelled": 0, "load_calls": 0, "unload_calls": 0, "by_model": {},
            "cancelled_models": [], "max_in_progress_json": 0, "traceparents": deque(maxlen=200),
        }
        self.open_connections = 0

    def take_fault(self, model: str) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault.get("model") in (None, model):
                count = fault.get("count")
                if count is not None:
                    fault["count"] = count - 1
                    if fault["count"] <= 0:
                        self.faults.remove(fault)
                return fault
        return None


class Connection(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.header = b""
        self.content_type = ""
        self.queue: deque[tuple[str, str, bytes, str]] = deque()
        self.busy = False
        self.task: asyncio.Future[None] | None = None

    # --- protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.open_connections -= 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.write_json(400, {"error": {"message": "bad HTTP", "type": "invalid_request_error"}})
            self.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")
        elif name.lower() == b"traceparent":
            self.state.stats["traceparents"].append(value.decode("latin-1"))

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        self.queue.append((method, self.url.decode(), b"".join(self.body), self.content_type))
        self.url, self.body, self.content_type = b"", [], ""
        if not self.busy:
            self.busy = True
            self.task = asyncio.ensure_future(self.serve_queue())

    async def serve_queue(self) -> None:
        while self.queue and not self.closed:
            method, url, body, content_type = self.queue.popleft()
            try:
                await handle(self, method, url, body, content_type)
            except Exception as exc:  # a bug here must show in the test, not hang it
                self.write_json(500, {"error": {"message": f"fake upstream bug: {exc!r}", "type": "api_error"}})
        self.busy = False

    # --- writing ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def write_head(self, status: int, content_type: str, length: int | None = None,
                   extra: dict[str, str] | None = None) -> None:
        head = f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n"
        head += f"content-length: {length}\r\n" if length is not None else "transfer-encoding: chunked\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (extra or {}).items())
        self.write(head.encode() + b"\r\n")

    def write_json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        body = orjson.dumps(obj)
        self.write_head(status, "application/json", len(body), extra)
        self.write(body)

    def write_chunk(self, data: bytes) -> None:
        self.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunks(self) -> None:
        self.write(b"0\r\n\r\n")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def error(message: str, etype: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": etype}}


async def handle(conn: Connection, method: str, url: str, raw: bytes, content_type: str = "") -> None:
    state = conn.state
    path = url.split("?")[0]
    state.stats["by_path"][path] = state.stats["by_path"].get(path, 0) + 1
    if path.startswith("/_"):
        return control(conn, method, path, raw)
    if path.startswith(PREFIX):
        path = path[len(PREFIX):]
    if path == "/status":
        return conn.write_json(200, {"pid": os.getpid(), "endpoints": []})
    if path == "/v1/models" and method == "GET":
        return conn.write_json(200, {"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "fake"} for m in state.models]})
    if path == "/models/loaded":
        return conn.write_json(200, sorted(state.loaded))
    for action in ("load", "unload"):
        if path.startswith(f"/models/{action}/"):
            await asyncio.sleep(float(state.config["manage_delay_ms"]) / 1000)
            return manage(conn, action, path.rsplit("/", 1)[1])
    if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
        return await infer(conn, path.endswith("chat/completions"), raw)
    if method == "POST" and path == "/v1/responses":
        return await surface.responses(conn, raw)
    if method == "POST" and path == "/v1/embeddings":
        return surface.embeddings(conn, raw)
    if method == "POST" and path == "/v1/audio/transcriptions":
        return surface.transcriptions(conn, raw, content_type)
    return conn.write_json(404, error(f"no route {method} {path}"))


def control(conn: Connection, method: str, path: str, raw: bytes) -> None:
    state = conn.state
    body = orjson.loads(raw) if raw.strip() else {}
    if path == "/_config":
        state.config.update(body)
    elif path == "/_fault":
        state.faults.append(body)
    elif path == "/_reset":
        state.reset()
    elif path == "/_stats":
        return conn.write_json(200, {**state.stats, "last_bodies": list(state.stats["last_bodies"]),
                                     "traceparents": list(state.stats["traceparents"]),
                                     "open_connections": state.open_connections, "loaded": sorted(state.loaded),
                                     "in_progress": state.in_progress})
    conn.write_json(200, {"ok": True})


def manage(conn: Connection, action: str, alias: str) -> None:
    state = conn.state
    match = next((m for m in state.models if alias_of(m) == alias), None)
    if not state.foundry or match is None:
        return conn.write_json(404, error(f"Model not found: {alias}"))
    if action == "unload":
        state.stats["unload_calls"] += 1
        active = state.active_by_model.get(match, 0)
        if active:  # like Foundry Local: a model with a generation running cannot be unloaded
            return conn.write_json(500, error(f"Unload failed: cannot unload model '{match}': {active} active "
                                              "request(s)", "server_error"))
    if action == "load":
        state.stats["load_calls"] += 1
        status = "already_loaded" if match in state.loaded else "loaded"
        state.loaded.add(match)
    else:
        status = "unloaded" if match in state.loaded else "not_loaded"
        state.loaded.discard(match)
    conn.write_json(200, {"status": status})


def pieces(text: str, n: int) -> list[str]:
    if n > len(text):
        text = ((text + " ") * math.ceil(n / max(1, len(text))))[: max(n, len(text))]
    return [text[i * len(text) // n:(i + 1) * len(text) // n] for i in range(n)]


async def infer(conn: Connection, chat: bool, raw: bytes) -> None:
    state = conn.state
    try:
        body = orjson.loads(raw)
        assert isinstance(body, dict)
    except (orjson.JSONDecodeError, AssertionError):
        return conn.write_json(400, error("invalid JSON body"))
    state.stats["requests"] += 1
    state.stats["last_bodies"].append(body)
    model = str(body.get("model"))
    state.stats["by_model"][model] = state.stats["by_model"].get(model, 0) + 1
    stream = body.get("stream") is True
    if model not in state.models:
        return conn.write_json(404, error(f"Model not found: {model}"))
    fault = state.take_fault(model) or {}
    mode = fault.get("mode")
    if state.foundry and mode is None:
        if model not in state.loaded:
            return conn.write_json(400, error(f"Model not loaded: {model} must be loaded before inference"))
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            message = "Requested output length exceeds the model's maximum context length"
            if not stream:
                return conn.write_json(400, error(message))
            mode = "stream_error"
    cfg = state.config
    if mode == "slow_first_byte":
        await asyncio.sleep(float(fault.get("seconds", 2)))
    elif mode == "slow_first_event" and stream:
        state.stats["streams_started"] += 1
        conn.write_head(200, "text/event-stream")
        deadline = time.monotonic() + float(fault.get("seconds", 2))
        while time.monotonic() < deadline and not conn.closed:
            await asyncio.sleep(0.02)
        if conn.closed:
            state.stats["streams_cancelled"] += 1
            state.stats["cancelled_models"].append(model)
            return
        state.stats["streams_started"] -= 1  # counted again below
    elif mode == "status":
        await asyncio.sleep(float(fault.get("seconds", 0)))  # a failure that takes a while (prompt processing)
        status = int(fault.get("status", 500))
        extra = {"retry-after": str(fault["retry_after"])} if "retry_after" in fault else None
        return conn.write_json(status, error(f"injected HTTP {status}", "api_error" if status >= 500 else
                                             "invalid_request_error"), extra)
    elif mode == "close":
        return conn.close()
    elif mode == "wrong_content_type":
        page = b"<html>oops</html>"
        conn.write_head(200, "text/html", len(page))
        return conn.write(page)
    elif mode == "garbage_sse":
        conn.write_head(200, "text/event-stream")
        conn.write_chunk(b"data: {not json\n\ngarbage without data\n\n")
        return conn.end_chunks()
    elif mode == "stream_error":
        conn.write_head(200, "text/event-stream")
        message = "Requested output length exceeds the model's maximum context length"
        conn.write_chunk(b"data: " + orjson.dumps(error(message)) + b"\n\n")
        return conn.end_chunks()

    text = cfg["reply"] or f"Hello from {model}."
    if mode == "huge":
        text = "x" * int(fault.get("bytes", 20_000_000))
    n = int(cfg["chunks"])
    parts = pieces(text, n) if mode != "huge" else [text]
    if cfg["pieces"]:  # the stream's content exactly as these pieces (the reply is their concatenation)
        parts = [str(p) for p in cfg["pieces"]]
        text = "".join(parts)
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []) if isinstance(m, dict))
    prompt_tokens += len(str(body.get("prompt", "")).split())
    choices = int(body.get("n") or 1) if isinstance(body.get("n"), int) else 1  # JSON answers honour n
    generated = len(parts) * (choices if not stream else 1)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}
    created = int(time.time())
    rid = f"chatcmpl-{state.stats['requests']}"
    if not stream:
        state.json_in_progress += 1
        state.stats["max_in_progress_json"] = max(state.stats["max_in_progress_json"], state.json_in_progress)
        try:
            await asyncio.sleep(float(cfg["delay_ms"]) / 1000)
        finally:
            state.json_in_progress -= 1
        if chat:
            payload: dict[str, Any] = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                                       "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                                                    "finish_reason": "stop"} for i in range(choices)], "usage": usage}
        else:
            payload = {"id": rid.replace("chat", ""), "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                       "usage": usage}
        data = orjson.dumps(payload)
        if mode in ("stall", "reset"):
            conn.write_head(200, "application/json", len(data))
            conn.write(data[: len(data) // 2])
            if mode == "reset":
                return conn.abort()
            return await stall(conn)
        conn.write_head(200, "application/json", len(data))
        return conn.write(data)

    state.stats["streams_started"] += 1
    if cfg["nagle"] and conn.transport is not None:
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    if mode != "slow_first_event":
        conn.write_head(200, "text/event-stream")
    style = str(cfg["sse_style"])
    if style == "lone_unterminated":
        conn.write_chunk(b"data: " + orjson.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                                   "model": model, "choices": [{"index": 0, "delta": {
                                                       "content": "alone"}, "finish_reason": None}]}))
        return conn.end_chunks()
    newline = {"crlf": b"\r\n", "cr": b"\r"}.get(style, b"\n")

    def sse(payload: bytes) -> bytes:
        if style == "multiline" and b',"' in payload:
            half = payload.index(b',"', len(payload) // 3) + 1 if b',"' in payload[len(payload) // 3:] else \
                payload.index(b',"') + 1  # between two JSON members: the joining newline is whitespace
            return b"data: " + payload[:half] + newline + b"data: " + payload[half:] + newline + newline
        return b"data: " + payload + newline + newline

    def event(delta: dict[str, Any] | None, finish: str | None = None, text_piece: str | None = None) -> bytes:
        if chat:
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
        else:
            chunk = {"id": rid, "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": 0, "text": text_piece or "", "finish_reason": finish}]}
        return sse(orjson.dumps(chunk))

    state.in_progress += 1
    state.active_by_model[model] = state.active_by_model.get(model, 0) + 1
    try:
        await _stream(conn, state, cfg, fault, mode, model, body, parts, chat, usage, rid, created, style, newline,
                      event, sse)
    finally:
        state.in_progress -= 1
        state.active_by_model[model] -= 1


async def _stream(conn: Connection, state: State, cfg: dict[str, Any], fault: dict[str, Any], mode: Any, model: str,
                  body: dict[str, Any], parts: list[str], chat: bool, usage: dict[str, Any], rid: str, created: int,
                  style: str, newline: bytes, event: Any, sse: Any) -> None:
    capacity = int(cfg["capacity"])

    def slowdown() -> float:  # past its capacity, every stream in flight shares the same "cores"
        return max(1.0, state.in_progress / capacity) if capacity else 1.0

    await asyncio.sleep(float(cfg["ttft_ms"]) / 1000 * slowdown())
    if chat:
        conn.write_chunk(event({"role": "assistant", "content": ""}))
    delay = float(fault.get("ms", cfg["chunk_delay_ms"])) / 1000
    after = int(fault.get("after", 2))
    for i, piece in enumerate(parts):
        if mode in ("stall", "reset") and i == after:
            if mode == "reset":
                return conn.abort()
            return await stall(conn)
        await asyncio.sleep(delay * slowdown())
        if conn.closed:
            state.stats["streams_cancelled"] += 1
            state.stats["cancelled_models"].append(model)
            return
        conn.write_chunk(event({"content": piece}, text_piece=piece))
    conn.write_chunk(event({}, "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        conn.write_chunk(sse(orjson.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                           "model": model, "choices": [], "usage": usage})))
    done = {"done_nospace": b"data:[DONE]" + newline + newline, "unterminated": b"data: [DONE]"}
    conn.write_chunk(done.get(style, b"data: [DONE]" + newline + newline))
    conn.end_chunks()
    await asyncio.sleep(0)
    if conn.closed:
        state.stats["streams_cancelled"] += 1
        state.stats["cancelled_models"].append(model)
    else:
        state.stats["streams_completed"] += 1




async def stall(conn: Connection) -> None:
    deadline = time.monotonic() + 600
    while not conn.closed and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    conn.state.stats["streams_cancelled"] += 1


class Silent(asyncio.Protocol):
    """Accepts, reads, never answers: an upstream that hangs."""

    def data_received(self, data: bytes) -> None:
        pass


async def serve(host: str, port: int, models: list[str], foundry: bool, *, silent: bool = False,
                tls: ssl.SSLContext | None = None) -> None:
    state = State(models, foundry)
    loop = asyncio.get_running_loop()
    factory: Any = Silent if silent else (lambda: Connection(state))
    server = await loop.create_server(factory, host, port, backlog=1024, ssl=tls)
    sock_port = server.sockets[0].getsockname()[1]
    print(f"READY {'https' if tls else 'http'}://{host if not tls else 'localhost'}:{sock_port}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", default="fake", help="comma-separated model ids")
    parser.add_argument("--foundry", action="store_true", help="mimic Foundry Local's local catalog")
    parser.add_argument("--silent", action="store_true", help="accept connections and never answer")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--tls-key", help="the certificate's PEM private key")
    args = parser.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.host, args.port, [m for m in args.models.split(",") if m], args.foundry,
                      silent=args.silent, tls=tls))


# --- for tests: the server as a managed subprocess -------------------------------------------------------


class UpstreamProcess:
    """``with UpstreamProcess(models=[...]) as up:`` — a running fake upstream, stopped by PID on exit."""

    def __init__(self, models: list[str], foundry: bool = False, *, silent: bool = False,
                 tls: tuple[str, str] | None = None, control_ssl: ssl.SSLContext | None = None) -> None:
        self.control_ssl = control_ssl  # trusts the test's CA, for the out-of-band calls over HTTPS
        self.models = models
        self.foundry = foundry
        self.extra = ["--silent"] if silent else []
        if tls:
            self.extra += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> UpstreamProcess:
        cmd = [sys.executable, "-m", "tests.fakes.upstream", "--port", "0", "--models", ",".join(self.models)]
        if self.foundry:
            cmd.append("--foundry")
        cmd += self.extra
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 10
        line = ""
        while time.monotonic() < deadline and not line.startswith("READY"):
            line = self.proc.stdout.readline().strip()
            if self.proc.poll() is not None:
                break
        if not line.startswith("READY"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        self.url = line.split()[1]
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=5, context=self.control_ssl) as response:
            return json.loads(response.read())

    def configure(self, **config: Any) -> None:
        self._post("/_config", config)

    def fault(self, mode: str, count: int | None = None, model: str | None = None, **params: Any) -> None:
        self._post("/_fault", {"mode": mode, "count": count, "model": model, **params})

    def reset(self) -> None:
        self._post("/_reset", {})

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_stats", timeout=5, context=self.control_ssl) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


if __name__ == "__main__":
    main()
