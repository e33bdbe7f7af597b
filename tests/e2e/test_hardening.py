"""The hardening review's findings, each shown through a gateway started like users start it, in front of
the fault-injecting upstream: no generation left running for nobody, the total timeout bounds everything,
a real half-open breaker, SSE in every framing, hung upstreams that cannot hang the gateway."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import FAKE_ENV, serve_fake
from tests.fakes.upstream import SSE_STYLES, UpstreamProcess
from tests.helpers import GatewayProcess

MESSAGES = [{"role": "user", "content": "hello"}]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Poll a condition (the event itself), bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def chat(gw: GatewayProcess, timeout: float = 15, **extra: object) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 8, **extra},
                      timeout=timeout)


def stream_text(sse: str) -> str:
    """The content a client reassembles from a chat stream."""
    text = ""
    for line in sse.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


def metric(gw: GatewayProcess, series: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def route_of(gw: GatewayProcess, task: str = "chat") -> dict[str, Any]:
    return httpx.get(f"{gw.base_url}/route", params={"task": task}, timeout=5).json()  # type: ignore[no-any-return]


# --- an opened upstream response is closed on every way out (finding 2) --------------------------------


@pytest.fixture(scope="module")
def gw(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    yield from serve_fake(request, {"GATEWAY_FIRST_BYTE_TIMEOUT": "1", "GATEWAY_KEEPALIVE_INTERVAL": "0.2",
                                    "GATEWAY_BREAKER_FAILURES": "1000"})


def test_first_event_timeout_closes_the_upstream_stream(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    """The head came, the first event did not: the model is abandoned for the next one, and its stream is
    closed — not left generating for nobody while the fallback works on the same prompt."""
    upstream.fault("slow_first_event", model="chat-a", seconds=4, count=1)
    r = chat(gw, stream=True)
    assert r.status_code == 200 and stream_text(r.text) == "Hello from chat-b."
    # keep-alive comments had already committed the headers to chat-a: the switch is announced in the stream
    assert ": fallback; timeout on chat-a, now chat-b" in r.text
    assert wait_for(lambda: "chat-a" in upstream.stats()["cancelled_models"], 3), upstream.stats()


def test_client_leaving_during_prompt_processing_stops_the_generation(gw: GatewayProcess,
                                                                       upstream: UpstreamProcess) -> None:
    upstream.fault("slow_first_event", model="chat-a", seconds=4, count=1)
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 8}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        for line in response.iter_lines():
            assert line.startswith(": keep-alive")  # the prompt is being processed...
            break  # ...and the user presses stop
    assert wait_for(lambda: "chat-a" in upstream.stats()["cancelled_models"], 3), upstream.stats()
    assert upstream.stats()["by_model"].get("chat-b") is None  # and no fallback sent the prompt elsewhere


# --- SSE in every framing reaches the client intact (finding 11) -----------------------------------------


@pytest.mark.parametrize("style", SSE_STYLES)
def test_every_sse_framing_is_relayed(gw: GatewayProcess, upstream: UpstreamProcess, style: str) -> None:
    upstream.configure(sse_style=style, chunks=3)
    series = 'gateway_requests_total{model="chat-a",route="chat",status_class="%s",task="chat"}'
    ok, failed = metric(gw, series % "2xx"), metric(gw, series % "5xx")
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model="chat-a", messages=MESSAGES, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from chat-a."
    assert metric(gw, series % "2xx") == ok + 1 and metric(gw, series % "5xx") == failed  # no spurious error


def test_a_lone_unterminated_event_does_not_hang_the_stream(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    """The first event is the whole stream, without its blank line: reading it reaches the end (and hands
    the connection back to the pool); the relay must not read the pooled connection again."""
    upstream.configure(sse_style="lone_unterminated")
    started = time.monotonic()
    r = chat(gw, stream=True, model="chat-a")
    assert time.monotonic() - started < 5
    assert stream_text(r.text) == "alone" and "before its end event" in r.text  # relayed, then one honest error event
    upstream.reset()
    assert chat(gw, model="chat-a").status_code == 200  # the pooled connection is fine


def test_a_client_that_stops_reading_does_not_hold_the_model(upstream: UpstreamProcess, registry_file: Path,
                                                              tmp_path: Path) -> None:
    """A client that keeps its connection open but reads nothing: after the idle timeout the gateway lets the
    request go — the upstream stream is closed and the slot freed — without blaming the model."""
    env = {**FAKE_ENV, "GATEWAY_IDLE_TIMEOUT": "1", "GATEWAY_MODEL_CONCURRENCY": "1", "GATEWAY_BREAKER_FAILURES": "1",
           "GATEWAY_ADAPTIVE_CONCURRENCY": "false"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "g.log") as g:
        g.wait_ready()
        # 16 MB in 4 KB pieces over 4 s: far more than the socket buffers between them hold
        upstream.configure(reply="x" * (16 << 20), chunks=4096, chunk_delay_ms=1)
        body = json.dumps({"model": "chat-a", "stream": True, "max_tokens": 8, "messages": MESSAGES}).encode()
        with socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: no auto-tuning
            stuck.connect(("127.0.0.1", g.port))
            stuck.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (len(body), body))
            assert wait_for(lambda: "chat-a" in upstream.stats()["cancelled_models"], 10), upstream.stats()
            upstream.configure(reply=None, chunks=4, chunk_delay_ms=0)
            r = chat(g, model="chat-a", timeout=10)  # the one slot is free again, and chat-a is not cooling
            assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-a"


# --- the total timeout bounds queueing, loading and the first byte too (finding 10) ------------------------


def test_total_timeout_covers_the_queue_and_the_first_byte(upstream: UpstreamProcess, registry_file: Path,
                                                           tmp_path: Path) -> None:
    env = {**FAKE_ENV, "GATEWAY_TOTAL_TIMEOUT": "1.5", "GATEWAY_MODEL_CONCURRENCY": "1",
           "GATEWAY_ADAPTIVE_CONCURRENCY": "false", "GATEWAY_QUEUE_TIMEOUT": "30", "GATEWAY_FIRST_BYTE_TIMEOUT": "60"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "g.log") as g:
        g.wait_ready()
        upstream.configure(delay_ms=6000)
        results: dict[str, tuple[int, float]] = {}

        def send(name: str) -> None:
            started = time.monotonic()
            r = chat(g, timeout=20, model="chat-a")
            results[name] = (r.status_code, time.monotonic() - started)

        first = threading.Thread(target=send, args=("slow upstream",))
        first.start()
        assert wait_for(lambda: upstream.stats()["by_model"].get("chat-a") == 1)
        send("queued behind it")
        first.join(20)
        for name, (status, elapsed) in results.items():
            assert status == 504, (name, status)
            assert elapsed < 4, (name, elapsed)  # 1.5 s, not 6 s (first byte) or 30 s (queue)


# --- the circuit breaker (finding 9) -------------------------------------------------------------------------


@pytest.fixture()
def breaker_gw(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = {**FAKE_ENV, "GATEWAY_BREAKER_FAILURES": "2", "GATEWAY_BREAKER_COOLDOWN": "1",
           "GATEWAY_INVENTORY_REFRESH_INTERVAL": "60"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "g.log") as g:
        g.wait_ready()
        yield g


def open_breaker(g: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("status", model="chat-a", status=500)
    for _ in range(2):
        assert chat(g).headers["x-gateway-model"] == "chat-b"
    assert route_of(g)["model"] == "chat-b"


def test_a_failed_probe_reopens_the_breaker_at_once(breaker_gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    open_breaker(breaker_gw, upstream)
    assert wait_for(lambda: route_of(breaker_gw)["model"] == "chat-a")  # cool-down over: half-open
    r = chat(breaker_gw)  # the probe fails...
    assert r.headers["x-gateway-model"] == "chat-b"
    route = route_of(breaker_gw)  # ...and one failure reopens it, not another two
    assert route["model"] == "chat-b"
    verdict = next(c for c in route["candidates"] if c["model"] == "chat-a")
    assert "failed probe" in verdict["reason"] and "http_500" in verdict["reason"]


def test_half_open_sends_one_probe_only(breaker_gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    open_breaker(breaker_gw, upstream)
    upstream.reset()
    upstream.fault("slow_first_byte", model="chat-a", seconds=1.5, count=1)  # a slow but healthy probe
    assert wait_for(lambda: route_of(breaker_gw)["model"] == "chat-a")
    probe: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: probe.setdefault("r", chat(breaker_gw)))
    thread.start()
    assert wait_for(lambda: upstream.stats()["by_model"].get("chat-a") == 1)  # the probe is at the model
    during = chat(breaker_gw)
    assert during.headers["x-gateway-model"] == "chat-b"  # not a second request to a model under test
    thread.join(10)
    assert probe["r"].headers["x-gateway-model"] == "chat-a" and probe["r"].status_code == 200
    assert chat(breaker_gw).headers["x-gateway-model"] == "chat-a"  # closed again
    assert upstream.stats()["by_model"]["chat-a"] == 2


def test_a_stream_that_dies_midway_counts_as_a_failure(breaker_gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    for _ in range(2):
        upstream.fault("reset", model="chat-a", after=2, count=1)
        r = chat(breaker_gw, stream=True)
        assert r.status_code == 200 and '"error"' in r.text  # content had gone out: an error event, no fallback
    assert route_of(breaker_gw)["model"] == "chat-b"  # two broken streams opened the breaker


# --- a hung upstream cannot hang the gateway (finding 4) -----------------------------------------------------


def test_a_silent_upstream_cannot_hang_start_up_or_requests(registry_file: Path, tmp_path: Path) -> None:
    with UpstreamProcess(models=[], silent=True) as silent:
        env = {**FAKE_ENV, "GATEWAY_CONNECT_TIMEOUT": "1", "GATEWAY_FIRST_BYTE_TIMEOUT": "1"}
        started = time.monotonic()
        with GatewayProcess(upstream=silent.url, registry=registry_file, env=env, log_path=tmp_path / "g.log",
                            ready_timeout=15) as g:
            assert time.monotonic() - started < 10  # start-up asked the upstream and gave up in time
            assert httpx.get(f"{g.url}/readyz", timeout=5).status_code == 503
            began = time.monotonic()
            r = chat(g, timeout=15)
            assert r.status_code in (503, 504) and time.monotonic() - began < 6, r.text
            assert r.json()["error"]["message"]


# --- slow clients (issue 31, finding 12) ----------------------------------------------------------------------


def _half_sent(gw: GatewayProcess, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    sock.sendall(data)
    return sock


def _closed(sock: socket.socket) -> bool:
    """Whether the gateway closed the socket (what it said before, if anything, read and dropped)."""
    try:
        while chunk := sock.recv(65536):
            if not chunk:
                break
        return True
    except (ConnectionResetError, TimeoutError, OSError):
        return True


def test_headers_and_bodies_that_stall_are_timed_out(upstream: UpstreamProcess, registry_file: Path,
                                                     tmp_path: Path) -> None:
    """A connection that trickles its headers is closed after GATEWAY_HEADER_TIMEOUT; a body that stops coming is a
    408 after GATEWAY_BODY_TIMEOUT — on the proxied routes and on the others (an upload). Keys on: none of it needs
    one."""
    env = {**FAKE_ENV, "GATEWAY_HEADER_TIMEOUT": "1", "GATEWAY_BODY_TIMEOUT": "1", "GATEWAY_API_KEYS": "k-secret-1"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "gw.log") as gw:
        started = time.monotonic()
        heads = _half_sent(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        assert _closed(heads) and time.monotonic() - started < 8
        for path, kind in (("/v1/chat/completions", "application/json"), ("/v1/files", "multipart/form-data; "
                                                                                     "boundary=b")):
            body = _half_sent(gw, f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-secret-1\r\n"
                                  f"Content-Type: {kind}\r\nContent-Length: 1000\r\n\r\n--b\r\n".encode())
            answer = b""
            while chunk := body.recv(65536):  # the answer, then the gateway closes
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), (path, answer[:200])
            assert b"request_timeout" in answer
            body.close()
        assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200


def test_sockets_without_a_key_cannot_take_healthz_down(upstream: UpstreamProcess, registry_file: Path,
                                                        tmp_path: Path) -> None:
    """250 sockets that sent half their headers used up a gateway's 256 file descriptors: /healthz and every
    client were refused. Connections that have not shown a key are capped (a quarter of the descriptors here), the
    oldest closed to make room."""
    env = {**FAKE_ENV, "GATEWAY_API_KEYS": "k-secret-1"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "gw.log",
                        wrap=["prlimit", "--nofile=256:256"]) as gw:
        socks = [_half_sent(gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n") for _ in range(250)]
        try:
            assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
            models = httpx.get(f"{gw.base_url}/models", headers={"Authorization": "Bearer k-secret-1"}, timeout=5)
            assert models.status_code == 200
        finally:
            for sock in socks:
                sock.close()
