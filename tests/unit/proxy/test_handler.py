"""The proxied endpoints end to end, in process: what reaches the client and what reaches the upstream for a JSON
answer, a stream, a body that is not JSON, a model nobody knows, and the request's id."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.unit.proxy.inprocess import (
    CHAT,
    DONE,
    MESSAGES,
    FakeUpstream,
    Harness,
    chunk,
    run,
    stream_of,
    usage_event,
)

MODELS = ["chat-a", "chat-b", "embed-a"]
ERROR_FIELDS = {"message", "type", "param", "code"}


def test_a_json_answer_reaches_the_client_byte_for_byte(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    raw = ('{ "id" : "chatcmpl-7",  "object":"chat.completion","created":1,"model":"chat-a",\n'
           '"choices":[{"index":0,"message":{"role":"assistant","content":"h\\u00e9llo \u00e9t\u00e9"},'
           '"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},'
           '"vendor_extra":[1, 2.50, null]}  ').encode()
    upstream.fault(lambda request, body: httpx.Response(200, content=raw,
                                                        headers={"content-type": "application/json"}))

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat(max_tokens=8, vendor_option={"x": [1, 2]})

    r = run(scenario())
    assert r.status_code == 200
    assert r.content == raw
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-gateway-model"] == "chat-a" and r.headers["x-gateway-task"] == "chat"
    assert r.headers["x-gateway-route"].startswith("auto")
    [sent] = [s for s in upstream.seen if s.method == "POST"]
    assert sent.path == CHAT and sent.body is not None
    assert sent.body["model"] == "chat-a" and sent.body["messages"] == MESSAGES
    assert sent.body["max_tokens"] == 8 and sent.body["vendor_option"] == {"x": [1, 2]}  # unknown fields forwarded


def test_a_stream_is_relayed_event_by_event_in_order_and_ends_with_done(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    gate = asyncio.Event()
    first, rest = chunk("chat-a", "Hel"), [chunk("chat-a", "lo"), chunk("chat-a", "!"), chunk("chat-a", None, "stop")]
    usage = usage_event("chat-a")  # the gateway asks for usage (for its metrics); this client did not
    upstream.fault(lambda request, body: stream_of([first, gate.wait, *rest, usage, DONE]))

    async def scenario() -> tuple[dict[str, Any], bytes, Any]:
        async with harness.serve(upstream) as gw:
            call = gw.open(CHAT, {"messages": MESSAGES, "stream": True})
            head = await call.head()
            received = b""
            while first not in received:  # the first event arrives while the upstream still holds the rest
                message = await call.next()
                received += message.get("body", b"")
                assert message.get("more_body"), message
            gate.set()
            return head, received, await call.finish()

    head, received, answer = run(scenario())
    assert head["status"] == 200 and received == first
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-gateway-model"] == "chat-a"
    assert answer.body == first + b"".join(rest) + DONE  # the upstream's bytes, the usage the client did not want out
    assert answer.messages[-1]["type"] == "http.response.body" and not answer.messages[-1].get("more_body")
    [sent] = [s for s in upstream.seen if s.method == "POST"]
    assert sent.body is not None and sent.body["stream"] is True


def test_a_stream_keeps_the_usage_the_client_asked_for(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat(stream=True, stream_options={"include_usage": True})

    r = run(scenario())
    assert r.status_code == 200
    events = [e for e in r.content.split(b"\n\n") if e]
    assert b'"usage"' in events[-2] and events[-1] == DONE.strip()


def test_a_body_that_is_not_json_is_an_openai_400(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.post(CHAT, content=b'{"messages": [')

    r = run(scenario())
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == ERROR_FIELDS
    assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error"
    assert r.headers["x-request-id"]
    assert upstream.inference() == []


def test_an_unknown_model_is_an_openai_404(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat(model="gpt-9")

    r = run(scenario())
    assert r.status_code == 404
    error = r.json()["error"]
    assert set(error) == ERROR_FIELDS and error["code"] == "model_not_found" and error["param"] == "model"
    assert "Known models" in error["message"]
    assert upstream.inference() == []


def test_the_clients_request_id_is_echoed_else_one_is_made(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)

    async def scenario() -> list[httpx.Response]:
        async with harness.serve(upstream) as gw:
            return [await gw.chat(headers={"x-request-id": "trace-42"}),
                    await gw.post(CHAT, content=b"nope", headers={"x-request-id": "trace-43"}),
                    await gw.chat(headers={"x-request-id": "has a space"}),
                    await gw.chat(), await gw.chat()]

    ok, failed, invisible, first, second = run(scenario())
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-42"
    assert failed.status_code == 400 and failed.headers["x-request-id"] == "trace-43"
    assert invisible.status_code == 200 and invisible.headers["x-request-id"] not in ("", "has a space")
    assert first.headers["x-request-id"] and first.headers["x-request-id"] != second.headers["x-request-id"]


def test_embeddings_are_routed_by_capability_and_relayed(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.post("/v1/embeddings", {"input": "hello"})

    r = run(scenario())
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "embed-a"
    assert r.json()["data"][0]["embedding"] == [0.25, 0.5, 0.75]
    assert upstream.inference("/v1/embeddings") == ["embed-a"]
