"""Whose fault a failure is, in process: failures in a row cool a model down (the next requests go elsewhere, or
are refused, without reaching it); a busy upstream (429) is not failing; a stream broken midway is the model's."""

from __future__ import annotations

import httpx

from tests.unit.proxy.inprocess import (
    FakeUpstream,
    Harness,
    chunk,
    metric,
    run,
    status,
    stream_of,
)

MODELS = ["chat-a", "chat-b", "embed-a"]


def test_failures_in_a_row_open_the_breaker_and_the_model_is_routed_around(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(status(500), model="chat-a")

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, str]:
        async with harness.serve(upstream, breaker_failures=2) as gw:
            fell_back = [await gw.chat(), await gw.chat()]
            return fell_back, await gw.chat(), await gw.metrics()

    fell_back, around, metrics = run(scenario())
    assert [r.headers["x-gateway-model"] for r in fell_back] == ["chat-b", "chat-b"]
    assert all(r.headers["x-gateway-route"].startswith("fallback; http_500 on chat-a") for r in fell_back)
    assert around.status_code == 200 and around.headers["x-gateway-model"] == "chat-b"
    assert around.headers["x-gateway-route"].startswith("auto")  # chosen first: chat-a is skipped
    assert upstream.inference() == ["chat-a", "chat-b", "chat-a", "chat-b", "chat-b"]
    assert metric(metrics, "gateway_model_cooling_down", model="chat-a") == 1.0


def test_an_open_breaker_refuses_a_pinned_request_without_calling_the_upstream(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(status(500), model="chat-a")

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream, breaker_failures=1) as gw:
            assert (await gw.chat(model="chat-a")).status_code == 502  # pinned: no fallback
            return await gw.chat(model="chat-a")

    r = run(scenario())
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "model_unavailable" and "chat-a" in error["message"]
    assert upstream.inference() == ["chat-a"]


def test_a_429_is_busy_not_failing(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(status(429, "busy", headers={"retry-after": "7"}), model="chat-a", count=3)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, str]:
        async with harness.serve(upstream, breaker_failures=1) as gw:
            busy = [await gw.chat(), await gw.chat()]
            pinned = await gw.chat(model="chat-a")
            busy.append(pinned)
            return busy, await gw.chat(), await gw.metrics()

    (first, second, pinned), after, metrics = run(scenario())
    for r in (first, second):
        assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-b"
        assert r.headers["x-gateway-route"].startswith("fallback; http_429 on chat-a")
    assert pinned.status_code == 429 and pinned.headers["retry-after"] == "7"  # the upstream said when
    # three refusals with a breaker at one failure, and chat-a is still chosen first
    assert after.status_code == 200 and after.headers["x-gateway-model"] == "chat-a"
    assert after.headers["x-gateway-route"].startswith("auto")
    assert upstream.inference() == ["chat-a", "chat-b", "chat-a", "chat-b", "chat-a", "chat-a"]
    assert metric(metrics, "gateway_model_cooling_down", model="chat-a") in (None, 0.0)


def test_a_stream_broken_midway_counts_against_the_model(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(lambda request, body: stream_of([chunk("chat-a", "Hel"), httpx.ReadError("reset by peer")]),
                   model="chat-a", count=1)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with harness.serve(upstream, breaker_failures=1) as gw:
            return await gw.chat(stream=True), await gw.chat()

    broken, after = run(scenario())
    assert broken.status_code == 200 and b'"error"' in broken.content  # content went out: no fallback
    assert after.headers["x-gateway-model"] == "chat-b" and after.headers["x-gateway-route"].startswith("auto")
    assert upstream.inference() == ["chat-a", "chat-b"]
