"""Relaying, in process: a stream that breaks, stalls or stops short after its first bytes ends with exactly one
OpenAI error event (never a hang, never a [DONE]); an answer that is not the JSON or SSE it should be is a 502."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.unit.proxy.inprocess import (
    CHAT,
    MESSAGES,
    Answer,
    Chunks,
    FakeUpstream,
    Harness,
    chunk,
    run,
    stream_of,
)

MODELS = ["chat-a", "chat-b", "embed-a"]


def _last_event_error(answer: Answer) -> dict[str, object]:
    events = answer.events()
    assert sum(b'"error"' in e for e in events) == 1, events
    assert b"[DONE]" not in answer.body
    assert events[-1].startswith(b"data: ")
    error = json.loads(events[-1][len(b"data: "):])["error"]
    assert isinstance(error, dict) and {"message", "type", "code"} <= set(error)
    return error


def test_a_stream_that_breaks_midway_ends_with_one_error_event(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    sent = [chunk("chat-a", "Hel"), chunk("chat-a", "lo")]
    stream = Chunks([*sent, httpx.ReadError("connection reset by peer")])
    upstream.fault(lambda request, body: stream_of(stream))

    async def scenario() -> Answer:
        async with harness.serve(upstream) as gw:
            return await gw.open(CHAT, {"messages": MESSAGES, "stream": True}).finish()

    answer = run(scenario())
    assert answer.status == 200 and answer.body.startswith(b"".join(sent))
    error = _last_event_error(answer)
    assert error["code"] == "upstream_error" and "broke" in str(error["message"])
    assert not answer.messages[-1].get("more_body")  # the response is ended, not left open
    assert stream.closed  # and the upstream's response was closed
    assert upstream.inference() == ["chat-a"]  # content reached the client: no fallback


def test_a_stream_that_ends_without_its_end_event_ends_with_an_error_event(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(lambda request, body: stream_of([chunk("chat-a", "Hel"), chunk("chat-a", "lo")]))

    async def scenario() -> Answer:
        async with harness.serve(upstream) as gw:
            return await gw.open(CHAT, {"messages": MESSAGES, "stream": True}).finish()

    answer = run(scenario())
    assert answer.status == 200
    assert _last_event_error(answer)["code"] == "upstream_error"


def test_a_stream_that_stalls_midway_is_cut_at_the_idle_timeout(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    never = asyncio.Event()
    upstream.fault(lambda request, body: stream_of([chunk("chat-a", "Hel"), never.wait]))

    async def scenario() -> Answer:
        async with harness.serve(upstream, idle_timeout=0.1) as gw:
            return await gw.open(CHAT, {"messages": MESSAGES, "stream": True}).finish()

    answer = run(scenario())
    assert answer.status == 200
    error = _last_event_error(answer)
    assert error["code"] == "upstream_timeout" and "stalled" in str(error["message"])


def test_a_json_answer_that_is_not_json_is_a_502(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(lambda request, body: httpx.Response(200, content=b'{"choices": [',
                                                        headers={"content-type": "application/json"}))

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with harness.serve(upstream) as gw:
            return await gw.chat(model="chat-a"), await gw.chat()

    pinned, auto = run(scenario())
    assert pinned.status_code == 502
    error = pinned.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "upstream_bad_response"
    # nothing reached the client yet: with a fallback the next model may answer
    assert auto.status_code == 502 and auto.json()["error"]["code"] == "upstream_bad_response"
    assert upstream.inference() == ["chat-a", "chat-a", "chat-b"]


def test_a_json_answer_of_another_type_is_a_502(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(lambda request, body: httpx.Response(200, content=b"<html>oops</html>",
                                                        headers={"content-type": "text/html"}), count=1)

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat(model="chat-a")

    r = run(scenario())
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_bad_response"


def test_a_stream_answered_with_json_is_a_502(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    upstream.fault(lambda request, body: stream_of([b'{"id": "x"}'], content_type="application/json"))

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat(model="chat-a", stream=True)

    r = run(scenario())
    assert r.status_code == 502 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "upstream_bad_response"


def test_a_json_answer_that_breaks_midway_is_a_502(harness: Harness) -> None:
    upstream = FakeUpstream(MODELS)
    body = Chunks([b'{"id": "chatcmpl-1", ', httpx.ReadError("connection reset by peer")])
    upstream.fault(lambda request, _: httpx.Response(200, headers={"content-type": "application/json"},
                                                     stream=body))

    async def scenario() -> httpx.Response:
        async with harness.serve(upstream) as gw:
            return await gw.chat(model="chat-a")

    r = run(scenario())
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert body.closed
