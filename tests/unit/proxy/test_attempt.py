"""One attempt, in process: Foundry Local's "not loaded" answered by loading the model and sending once more, the
model loaded before the first send, and an upstream's verdict on the request itself passed to the client."""

from __future__ import annotations

import httpx

from tests.unit.proxy.inprocess import CHAT, FakeUpstream, Harness, error, run, sse, status, stream_of

FOUNDRY_MODELS = ["chat-a-generic-cpu:1", "chat-b-generic-cpu:1"]
MODELS = ["chat-a", "chat-b", "embed-a"]
LENGTH = "Requested output length exceeds the model's maximum context length"


def test_foundry_not_loaded_is_loaded_and_sent_once_more(harness: Harness) -> None:
    upstream = FakeUpstream(FOUNDRY_MODELS, foundry=True, loaded={"chat-a-generic-cpu:1"})

    async def scenario() -> tuple[httpx.Response, int]:
        async with harness.serve(upstream) as gw:
            upstream.loaded.clear()  # the runtime unloaded it behind the gateway's back
            started = len(upstream.seen)
            return await gw.chat(), started

    r, started = run(scenario())
    assert r.status_code == 200 and r.json()["model"] == "chat-a-generic-cpu:1"
    assert r.headers["x-gateway-model"] == "chat-a" and r.headers["x-gateway-route"].startswith("auto")  # no fallback
    after = [(s.method, s.path) for s in upstream.seen[started:]]
    assert after == [("POST", CHAT), ("GET", "/models/load/chat-a"), ("POST", CHAT)]
    assert upstream.inference() == ["chat-a-generic-cpu:1", "chat-a-generic-cpu:1"]


def test_foundry_model_is_loaded_before_the_first_send_with_a_default_max_tokens(harness: Harness) -> None:
    upstream = FakeUpstream(FOUNDRY_MODELS, foundry=True)

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream, default_max_tokens=77) as gw:
            return await gw.chat()

    r = run(scenario())
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-a"
    assert r.headers["x-gateway-default-max-tokens"] == "77"  # the request had none: Foundry Local needs one
    assert upstream.gets("/models/load/") == ["/models/load/chat-a"]
    [sent] = [s for s in upstream.seen if s.method == "POST"]
    assert sent.body is not None and sent.body["model"] == "chat-a-generic-cpu:1" and sent.body["max_tokens"] == 77
    assert upstream.seen.index(sent) > [s.path for s in upstream.seen].index("/models/load/chat-a")


def test_an_upstream_400_is_the_clients_answer_not_a_failure(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(status(400, "'logit_bias' must map token ids", "invalid_request_error", "invalid_value"),
                   model="chat-a", count=1)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with harness.serve(upstream, breaker_failures=1) as gw:
            return await gw.chat(), await gw.chat()

    refused_r, next_r = run(scenario())
    assert refused_r.status_code == 400
    err = refused_r.json()["error"]
    assert err["message"] == "'logit_bias' must map token ids"
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_value"
    assert refused_r.headers["x-gateway-model"] == "chat-a"
    # no other model tried, and the model is not cooled down (a breaker at one failure would have opened)
    assert next_r.status_code == 200 and next_r.headers["x-gateway-model"] == "chat-a"
    assert next_r.headers["x-gateway-route"].startswith("auto")
    assert upstream.inference() == ["chat-a", "chat-a"]


def test_a_stream_that_opens_with_an_error_event_is_an_http_error(harness: Harness) -> None:
    """Foundry Local answers HTTP 200 and a lone error event when a request cannot work: the client gets an
    HTTP error, not a 200 stream."""
    upstream = FakeUpstream(MODELS)
    upstream.fault(lambda request, body: stream_of([sse(error(400, LENGTH).content)]), model="chat-a")

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat(stream=True)

    r = run(scenario())
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert LENGTH in r.json()["error"]["message"]
    assert upstream.inference() == ["chat-a"]
