"""The gateway's whole ASGI app in this process, in front of a scripted upstream — no sockets, no subprocesses.

- :class:`FakeUpstream` answers what the gateway asks of an upstream (``/v1/models``, chat completions as JSON or
  SSE, embeddings; with ``foundry=True`` Foundry Local's catalog prefix, ``/models/loaded``, ``/models/load/…``,
  the 400 "Model … not loaded" before a load and the one for a missing ``max_tokens``, as
  ``tests/fakes/upstream.py`` does). Faults are queued per model (:meth:`FakeUpstream.fault`); every request it
  saw is kept (:attr:`FakeUpstream.seen`).
- :class:`Harness` builds the app (``app.server.app.build_app``) with the one seam the tests need: the upstream
  transport. ``Upstream.__init__`` gets its transport from ``app.upstream.client.make_transport(settings)`` (the
  proxied POSTs use it directly, the management GETs through ``Upstream.client`` built on it); that function is
  monkeypatched to hand out an ``httpx.MockTransport`` over the fake. The app's lifespan runs through the ASGI
  lifespan protocol, as uvicorn runs it.
- Requests go in through ``httpx.ASGITransport`` (:meth:`Served.post`: the whole response) or straight to the ASGI
  callable (:meth:`Served.open`: each ``http.response.body`` message as it is sent, for streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from app.core.settings import Settings
from app.gateway import Gateway
from app.server.app import build_app

T = TypeVar("T")
PREFIX = "/catalogs/local"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello"}]
REGISTRY: list[dict[str, Any]] = [
    {"name": "chat-a", "task": "chat", "min_ram_gb": 4},
    {"name": "chat-b", "task": "chat", "min_ram_gb": 2},
    {"name": "embed-a", "task": "embeddings", "min_ram_gb": 1},
]
_VARIANT = re.compile(r"-generic-(cpu|gpu)$")

Reply = Callable[[httpx.Request, dict[str, Any]], "httpx.Response | Awaitable[httpx.Response]"]


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run a scenario in a fresh event loop; a hang fails the test instead of blocking it."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def alias_of(model_id: str) -> str:
    return _VARIANT.sub("", model_id.split(":")[0])


# --- the upstream ------------------------------------------------------------------------------------------------


class Chunks(httpx.AsyncByteStream):
    """A response body given piece by piece: bytes are sent, an exception is raised there (a connection that
    breaks), a coroutine function is awaited (a gate the test opens). Records whether the gateway closed it."""

    def __init__(self, parts: Iterable[bytes | BaseException | Callable[[], Awaitable[Any]]]) -> None:
        self.parts = list(parts)
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, BaseException):
                raise part
            if callable(part):
                await part()
                continue
            yield part

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Seen:
    method: str
    path: str  # without Foundry Local's catalog prefix
    body: dict[str, Any] | None
    headers: httpx.Headers

    @property
    def model(self) -> str | None:
        return None if self.body is None else self.body.get("model")


@dataclass
class _Fault:
    reply: Reply
    model: str | None
    count: int | None


@dataclass
class FakeUpstream:
    models: list[str]
    foundry: bool = False
    loaded: set[str] = field(default_factory=set)  # Foundry Local: what is really loaded
    seen: list[Seen] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)

    def fault(self, reply: Reply, *, model: str | None = None, count: int | None = None) -> None:
        """Answer the next ``count`` inference requests (all, if None) for ``model`` (any, if None) with ``reply``."""
        self.faults.append(_Fault(reply, model, count))

    def inference(self, path: str = CHAT) -> list[str | None]:
        """The models of the inference requests seen on ``path``, in order."""
        return [s.model for s in self.seen if s.method == "POST" and s.path == path]

    def gets(self, prefix: str) -> list[str]:
        return [s.path for s in self.seen if s.method == "GET" and s.path.startswith(prefix)]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.foundry:
            assert path.startswith(PREFIX), f"Foundry Local's routes are under its catalog prefix: {path}"
            path = path[len(PREFIX):]
        body: dict[str, Any] | None = None
        if request.method == "POST":
            body = orjson.loads(request.content)
        self.seen.append(Seen(request.method, path, body, request.headers))
        if request.method == "GET":
            return self._manage(path)
        assert body is not None
        model = str(body.get("model"))
        if model not in self.models:
            return error(404, f"Model not found: {model}")
        fault = self._take_fault(model)
        if fault is not None:
            answer = fault.reply(request, body)
            return answer if isinstance(answer, httpx.Response) else await answer
        if self.foundry:
            if model not in self.loaded:
                return error(400, f"Model not loaded: {model} must be loaded before inference")
            if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
                return error(400, "Requested output length exceeds the model's maximum context length")
        if path == "/v1/embeddings":
            return json_response({"object": "list", "model": model, "data": [
                {"object": "embedding", "index": 0, "embedding": [0.25, 0.5, 0.75]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        if path == CHAT:
            return stream_of(chat_events(body)) if body.get("stream") is True else json_response(chat_answer(body))
        return error(404, f"no route POST {path}")

    def _take_fault(self, model: str) -> _Fault | None:
        for fault in self.faults:
            if fault.model in (None, model):
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    def _manage(self, path: str) -> httpx.Response:
        if path == "/v1/models":
            return json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        if self.foundry and path == "/models/loaded":
            return json_response(sorted(self.loaded))
        if self.foundry and path.startswith("/models/load/"):
            alias = path.rsplit("/", 1)[1]
            match = next((m for m in self.models if alias_of(m) == alias), None)
            if match is None:
                return error(404, f"Model not found: {alias}")
            outcome = "already_loaded" if match in self.loaded else "loaded"
            self.loaded.add(match)
            return json_response({"status": outcome})
        return error(404, f"no route GET {path}")


# --- replies -----------------------------------------------------------------------------------------------------


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(obj), headers={"content-type": "application/json",
                                                                      **(headers or {})})


def error(status: int, message: str, etype: str | None = None, code: str | None = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    etype = etype or ("api_error" if status >= 500 else "invalid_request_error")
    return json_response({"error": {"message": message, "type": etype, "code": code}}, status, headers)


def chat_answer(body: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    model = body["model"]
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text or f"Hello from {model}."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}


def sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"


def chunk(model: str, content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def usage_event(model: str) -> bytes:
    return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}})


DONE = b"data: [DONE]\n\n"


def chat_events(body: dict[str, Any], pieces: Iterable[str] = ("Hello", " from", " there.")) -> list[bytes]:
    """An OpenAI-style stream: content chunks, the finish chunk, the usage chunk if asked for, [DONE]."""
    model = body["model"]
    events = [chunk(model, piece) for piece in pieces] + [chunk(model, None, "stop")]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append(usage_event(model))
    return [*events, DONE]


def stream_of(parts: Chunks | Iterable[bytes | BaseException | Callable[[], Awaitable[Any]]],
              content_type: str = "text/event-stream") -> httpx.Response:
    body = parts if isinstance(parts, Chunks) else Chunks(parts)
    return httpx.Response(200, headers={"content-type": content_type}, stream=body)


def status(code: int, message: str | None = None, etype: str | None = None, error_code: str | None = None,
           headers: dict[str, str] | None = None) -> Reply:
    return lambda request, body: error(code, message or f"injected HTTP {code}", etype, error_code, headers)


def refused() -> Reply:
    def reply(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    return reply


# --- the gateway -------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    messages: list[dict[str, Any]]  # every ASGI message the app sent, in order

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[bytes]:
        return [e + b"\n\n" for e in self.body.split(b"\n\n") if e]


class Call:
    """One request handed straight to the ASGI app; what it sends is read message by message."""

    def __init__(self, app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.messages: list[dict[str, Any]] = []
        self.done = asyncio.Event()  # the client "leaves" (http.disconnect) only once the response ended
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"gateway.test"), (b"content-type", b"application/json"), *headers],
                 "client": ("127.0.0.1", 50000), "server": ("gateway.test", 80)}
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            self.messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.done.set()
            await self.sent.put(message)

        self.task = asyncio.ensure_future(app(scope, receive, send))

    async def next(self) -> dict[str, Any]:
        return await self.sent.get()

    async def head(self) -> dict[str, Any]:
        message = await self.next()
        assert message["type"] == "http.response.start", message
        return message

    async def finish(self) -> Answer:
        await self.task
        start = self.messages[0]
        headers = httpx.Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]])
        body = b"".join(m.get("body", b"") for m in self.messages[1:])
        return Answer(start["status"], headers, body, list(self.messages))


@dataclass
class Served:
    app: Any
    gateway: Gateway
    client: httpx.AsyncClient

    async def post(self, path: str, body: Any = None, *, content: bytes | None = None,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        if content is None:
            content = orjson.dumps(body)
        return await self.client.post(path, content=content,
                                      headers={"content-type": "application/json", **(headers or {})})

    async def chat(self, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        return await self.post(CHAT, {"messages": MESSAGES, **body}, headers=headers)

    def open(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Call:
        return Call(self.app, path, orjson.dumps(body),
                    [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()])

    async def metrics(self) -> str:
        response = await self.client.get("/metrics")
        assert response.status_code == 200
        return response.text


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value in Prometheus' text format (labels in any order), None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, rest = series.partition("{")
        if sample != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if found == labels:
            return float(value)
    return None


class Harness:
    """Builds the gateway in process over a :class:`FakeUpstream` (see the module's docstring)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path
        for name in list(os.environ):  # the settings come from the test alone
            if name.startswith(("GATEWAY_", "OTEL_")):
                monkeypatch.delenv(name)

    def settings(self, upstream: FakeUpstream, registry: list[dict[str, Any]] | None = None,
                 **overrides: Any) -> Settings:
        registry_path = self.tmp_path / "models.json"
        registry_path.write_text(json.dumps(registry or REGISTRY))
        values: dict[str, Any] = {
            "upstream_mode": "external", "upstream_url": "http://upstream.test",
            "upstream_kind": "foundry" if upstream.foundry else "openai",
            "registry_path": registry_path, "registry_watch_interval": 0, "inventory_refresh_interval": 3600,
            "host_ram_gb": 16, "state_dir": self.tmp_path / "state", "state_min_free_bytes": 0,
            "foundry_cache_dir": self.tmp_path / "foundry", "access_log": False, "cache": "off",
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    @contextlib.asynccontextmanager
    async def serve(self, upstream: FakeUpstream, registry: list[dict[str, Any]] | None = None,
                    **overrides: Any) -> AsyncIterator[Served]:
        settings = self.settings(upstream, registry, **overrides)
        self.monkeypatch.setattr("app.upstream.client.make_transport", lambda _: httpx.MockTransport(upstream))
        gateway = Gateway(settings)
        app = build_app(settings, gateway)
        async with _lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                     base_url="http://gateway.test") as client:
            yield Served(app, gateway, client)


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """Start-up and shut-down through the ASGI lifespan protocol, as a server runs them."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get,
                                     outbox.put))

    async def reply(expected: str) -> None:
        getting = asyncio.ensure_future(outbox.get())
        await asyncio.wait({getting, task}, return_when=asyncio.FIRST_COMPLETED)
        if not getting.done():
            getting.cancel()
            task.result()  # the app's own exception, if it raised one
            raise AssertionError(f"the app ended its lifespan without {expected}")
        message = getting.result()
        assert message["type"] == expected, message

    await inbox.put({"type": "lifespan.startup"})
    await reply("lifespan.startup.complete")
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await reply("lifespan.shutdown.complete")
        await task
