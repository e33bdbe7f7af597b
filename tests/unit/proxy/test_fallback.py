"""Fallback, in process: a model that fails before its first byte hands the request to the next one, and says so;
when every model fails the client gets one OpenAI error that carries the cause."""

from __future__ import annotations

import httpx

from tests.unit.proxy.inprocess import FakeUpstream, Harness, metric, refused, run, status

MODELS = ["chat-a", "chat-b", "embed-a"]


def test_a_5xx_moves_the_request_to_the_next_model_and_says_so(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(status(500), model="chat-a")

    async def scenario() -> tuple[httpx.Response, str]:
        async with harness.serve(upstream) as gw:
            return await gw.chat(max_tokens=8), await gw.metrics()

    r, metrics = run(scenario())
    assert r.status_code == 200 and r.json()["model"] == "chat-b"
    assert r.headers["x-gateway-model"] == "chat-b"
    assert r.headers["x-gateway-route"].startswith("fallback; http_500 on chat-a")
    assert upstream.inference() == ["chat-a", "chat-b"]
    assert metric(metrics, "gateway_fallbacks_total", cause="http_500", model="chat-a", task="chat") == 1.0


def test_a_refused_connection_moves_the_request_to_the_next_model(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(refused(), model="chat-a")

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat()

    r = run(scenario())
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-b"
    assert r.headers["x-gateway-route"].startswith("fallback; connect on chat-a")
    assert upstream.inference() == ["chat-a", "chat-b"]


def test_a_stream_falls_back_while_nothing_reached_the_client(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(status(503), model="chat-a")

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat(stream=True)

    r = run(scenario())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-gateway-model"] == "chat-b"
    assert r.headers["x-gateway-route"].startswith("fallback; http_503 on chat-a")
    assert b'"error"' not in r.content and r.content.endswith(b"data: [DONE]\n\n")
    assert upstream.inference() == ["chat-a", "chat-b"]


def test_every_model_failing_is_one_openai_502_with_the_upstreams_cause(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(status(503, "the engine is on fire"))

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat()

    r = run(scenario())
    assert r.status_code == 502
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_error" and "the engine is on fire" in error["message"]
    assert upstream.inference() == ["chat-a", "chat-b"]


def test_every_model_unreachable_is_an_openai_503(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(refused())

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat()

    r = run(scenario())
    assert r.status_code == 503
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_unavailable" and "unreachable" in error["message"].lower()
    assert upstream.inference() == ["chat-a", "chat-b"]
