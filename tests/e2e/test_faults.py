"""Faults injected by a real upstream: what the client gets (status, error body, time bound), and that the
gateway stays healthy afterwards. Also fallback, circuit breaking, cancellation, keep-alive, queueing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import FAKE_ENV, serve_fake
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for

MESSAGES = [{"role": "user", "content": "hello"}]
FAULT_ENV = {
    "GATEWAY_FIRST_BYTE_TIMEOUT": "1",
    "GATEWAY_IDLE_TIMEOUT": "1",
    "GATEWAY_KEEPALIVE_INTERVAL": "0.3",
    "GATEWAY_BREAKER_FAILURES": "1000",
}


@pytest.fixture(scope="module")
def gw(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    yield from serve_fake(request, FAULT_ENV)


def chat(gw: GatewayProcess, stream: bool = False, timeout: float = 15, **extra: object) -> httpx.Response:
    body = {"messages": MESSAGES, "max_tokens": 8, "stream": stream, **extra}
    return httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=timeout)


def assert_healthy(gw: GatewayProcess) -> None:
    assert httpx.get(f"{gw.url}/healthz", timeout=2).status_code == 200
    r = chat(gw)
    assert r.status_code == 200, r.text
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert "gateway_requests_in_flight 0.0" in metrics


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


def test_slow_first_byte_times_out_then_falls_back(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("slow_first_byte", model="chat-a", seconds=3)
    started = time.monotonic()
    r = chat(gw)
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-b"
    assert r.headers["x-gateway-route"].startswith("fallback; timeout on chat-a")
    assert time.monotonic() - started < 2.5
    upstream.reset()
    assert_healthy(gw)


def test_slow_first_byte_everywhere_is_504(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("slow_first_byte", seconds=3)
    started = time.monotonic()
    assert_openai_error(chat(gw), 504, "upstream_timeout")
    assert time.monotonic() - started < 4  # two candidates × 1 s first-byte timeout
    upstream.reset()
    assert_healthy(gw)


def test_500_falls_back_and_is_counted(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("status", model="chat-a", status=500)
    r = chat(gw)
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-b"
    assert 'gateway_fallbacks_total{cause="http_500",model="chat-a",task="chat"}' in httpx.get(
        f"{gw.url}/metrics").text
    upstream.fault("status", status=503)
    assert_openai_error(chat(gw), 502)
    upstream.reset()
    assert_healthy(gw)


def test_upstream_4xx_is_relayed_without_fallback(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("status", status=400)
    before = upstream.stats()["requests"]
    assert_openai_error(chat(gw), 400)
    assert upstream.stats()["requests"] == before + 1  # a client error: no other model is tried
    upstream.reset()


@pytest.mark.parametrize("stream", [False, True])
def test_stall_mid_stream_or_body_is_bounded(gw: GatewayProcess, upstream: UpstreamProcess, stream: bool) -> None:
    upstream.fault("stall", after=2)
    started = time.monotonic()
    r = chat(gw, stream=stream)
    elapsed = time.monotonic() - started
    assert elapsed < 4, elapsed
    if stream:
        assert r.status_code == 200
        assert r.text.count('"error"') == 1 and "stalled" in r.text
        assert "[DONE]" not in r.text
    else:
        assert r.status_code in (502, 504)
    upstream.reset()
    assert_healthy(gw)


def test_reset_mid_stream_gives_one_error_event(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("reset", after=2)
    r = chat(gw, stream=True)
    assert r.status_code == 200
    events = [line for line in r.text.splitlines() if line.startswith("data:")]
    assert events[-1].startswith('data: {"error"') and sum('"error"' in e for e in events) == 1
    upstream.reset()
    assert_healthy(gw)


def test_reset_with_openai_client_raises_api_error(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("reset", after=2)
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=8, stream=True))
    upstream.reset()


@pytest.mark.parametrize("stream", [False, True])
def test_garbage_sse_and_wrong_content_type(gw: GatewayProcess, upstream: UpstreamProcess, stream: bool) -> None:
    for mode in ("garbage_sse", "wrong_content_type"):
        upstream.fault(mode)
        assert_openai_error(chat(gw, stream=stream), 502)
        upstream.reset()
    assert_healthy(gw)


def test_connection_closed_without_response(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("close", model="chat-a")
    r = chat(gw)
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-b"
    upstream.reset()


def test_huge_response_is_relayed_whole(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("huge", bytes=20_000_000, count=1)
    r = chat(gw, timeout=60)
    assert r.status_code == 200 and len(r.content) >= 20_000_000
    assert r.json()["choices"][0]["message"]["content"]
    assert_healthy(gw)


def test_foundry_style_stream_error_becomes_an_http_error(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("stream_error")
    r = chat(gw, stream=True)
    assert r.status_code in (400, 502)
    assert r.headers["content-type"].startswith("application/json")
    assert "error" in r.json()
    upstream.reset()


def test_client_disconnect_cancels_the_upstream_request(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.configure(chunks=40, chunk_delay_ms=100)
    before = upstream.stats()["streams_cancelled"]
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 8}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        for _ in response.iter_raw():
            break
    assert wait_for(lambda: upstream.stats()["streams_cancelled"] == before + 1, 3)
    upstream.reset()
    assert_healthy(gw)


def test_keepalive_comments_while_first_token_is_slow(gw: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.fault("slow_first_byte", seconds=0.9, count=1)
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 8}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as r:
        for line in r.iter_lines():
            if line:
                lines.append((time.monotonic() - started, line))
    comments = [t for t, line in lines if line.startswith(": keep-alive")]
    first_data = next(t for t, line in lines if line.startswith("data:"))
    assert len(comments) >= 2 and all(t < first_data for t in comments), lines[:5]
    assert lines[-1][1] == "data: [DONE]"


def test_circuit_breaker_cools_a_failing_model(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> None:
    env = {**FAKE_ENV, "GATEWAY_BREAKER_FAILURES": "2", "GATEWAY_BREAKER_COOLDOWN": "1"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "g.log") as g:
        g.wait_ready()
        upstream.fault("status", model="chat-a", status=500)
        for _ in range(2):
            assert chat(g).headers["x-gateway-model"] == "chat-b"  # fell back
        calls = upstream.stats()["requests"]
        r = chat(g)  # chat-a is cooling down: routed straight to chat-b, no call to chat-a
        assert r.headers["x-gateway-model"] == "chat-b" and r.headers["x-gateway-route"].startswith("auto")
        assert upstream.stats()["requests"] == calls + 1
        assert "gateway_model_cooling_down{model=\"chat-a\"} 1.0" in httpx.get(f"{g.url}/metrics").text
        upstream.reset()
        # cool-down over: chat-a is routable again (half-open), probed, and recovers
        assert wait_for(lambda: httpx.get(f"{g.base_url}/route", params={"task": "chat"}).json()["model"] == "chat-a")
        assert chat(g).headers["x-gateway-model"] == "chat-a"


def test_queue_is_fifo_and_bounded(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> None:
    env = {**FAKE_ENV, "GATEWAY_MODEL_CONCURRENCY": "1", "GATEWAY_ADAPTIVE_CONCURRENCY": "false",
           "GATEWAY_QUEUE_SIZE": "4", "GATEWAY_ADMIN_API_KEY": "a"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "g.log") as g:
        g.wait_ready()
        upstream.configure(delay_ms=900)
        results: dict[int, httpx.Response] = {}

        def send(i: int) -> None:
            body = {"model": "chat-a", "max_tokens": 4, "messages": [{"role": "user", "content": f"request {i}"}]}
            results[i] = httpx.post(f"{g.base_url}/chat/completions", json=body, timeout=30)

        def waiting() -> int:
            status = httpx.get(f"{g.url}/admin/status", headers={"Authorization": "Bearer a"}).json()
            limiter = status["limiters"].get("chat-a", {"in_flight": 0, "queued": 0})
            return int(limiter["in_flight"] + limiter["queued"])

        threads = []
        for i in range(7):
            t = threading.Thread(target=send, args=(i,))
            t.start()
            threads.append(t)
            if i < 5:  # a known arrival order: the next is sent once this one holds its place
                assert wait_for(lambda n=i + 1: waiting() == n), f"request {i} never reached the queue"
        for t in threads:
            t.join(30)
        statuses = [results[i].status_code for i in range(7)]
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429], statuses
        assert results[6].headers["retry-after"].isdigit()
        assert_openai_error(results[6], 429, "overloaded")
        served = [b["messages"][0]["content"] for b in upstream.stats()["last_bodies"]][-5:]
        assert served == [f"request {i}" for i in range(5)], served
