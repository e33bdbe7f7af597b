"""The gateway in front of a real OpenAI-compatible test upstream, driven by the official openai client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess

MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_non_streaming_chat_routes_by_task_and_ram(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES, max_tokens=16)
    completion = raw.parse()
    assert raw.headers["x-gateway-model"] == "chat-a"  # chat-big (64 GiB) does not fit a 15 GiB budget
    assert raw.headers["x-gateway-task"] == "chat"
    assert raw.headers["x-gateway-route"].startswith("auto")
    assert raw.headers["x-request-id"]
    assert completion.model == "chat-a"  # the model that really answered
    assert completion.choices[0].message.content == "Hello from chat-a."
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert upstream.stats()["last_bodies"][-1]["model"] == "chat-a"


def test_streaming_chat_reassembles_and_strips_injected_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=16, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from chat-a."
    assert all(c.usage is None for c in chunks)  # the gateway asked for usage; the client did not


def test_streaming_usage_when_client_asks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto", messages=MESSAGES, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stream_ends_with_done(gateway: GatewayProcess) -> None:
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 8}
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert text.rstrip().endswith("data: [DONE]")


def test_task_header_routes_to_code_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        messages=MESSAGES, max_tokens=8, model="auto", extra_headers={"X-Task": "code"}
    )
    assert raw.headers["x-gateway-model"] == "code-a"
    assert raw.headers["x-gateway-task"] == "code"


def test_no_model_uses_default_task(gateway: GatewayProcess) -> None:
    r = httpx.post(f"{gateway.base_url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 8})
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-a"


def test_pinned_model_by_alias(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(model="b", messages=MESSAGES, max_tokens=8)
    assert raw.headers["x-gateway-model"] == "chat-b"
    assert raw.headers["x-gateway-route"].startswith("pinned")
    assert upstream.stats()["last_bodies"][-1]["model"] == "chat-b"


def test_unknown_fields_are_forwarded(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=8, seed=7,
                                   extra_body={"vendor_option": {"x": [1, 2]}})
    body = upstream.stats()["last_bodies"][-1]
    assert body["vendor_option"] == {"x": [1, 2]} and body["seed"] == 7 and body["messages"] == MESSAGES


def test_unknown_task_is_400_in_openai_format(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=MESSAGES, extra_headers={"X-Task": "poetry"})
    error = info.value.body
    assert isinstance(error, dict)
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == "unknown_task" and "chat, code, vision" in error["message"]


def test_nothing_fits_is_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="auto", messages=MESSAGES, extra_headers={"X-Task": "vision"})
    assert info.value.status_code == 503
    assert "needs 128 GiB" in info.value.message and "budget is 15 GiB" in info.value.message


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert "Known models" in info.value.message


def test_models_lists_registry_with_fit_and_upstream_state(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["chat-big", "chat-a", "chat-b", "code-a", "ghost", "vision-xl"]
    rows = {row["id"]: row for row in httpx.get(f"{gateway.base_url}/models").json()["data"]}
    assert rows["chat-big"]["fits"] is False and rows["chat-a"]["fits"] is True
    assert rows["ghost"]["available"] is False and rows["chat-a"]["available"] is True
    assert [r["id"] for r in httpx.get(f"{gateway.base_url}/models?task=code").json()["data"]] == ["code-a", "ghost"]


def test_route_dry_run_explains_every_candidate(gateway: GatewayProcess) -> None:
    decision = httpx.get(f"{gateway.base_url}/route", params={"task": "code"}).json()
    assert decision["model"] == "code-a"
    verdicts = {c["model"]: c for c in decision["candidates"]}
    assert verdicts["code-a"]["decision"] == "selected"
    assert verdicts["ghost"] == {**verdicts["ghost"], "decision": "skipped", "reason": "not available on the upstream"}
    chat = httpx.get(f"{gateway.base_url}/route", params={"task": "chat"}).json()
    assert [c["decision"] for c in chat["candidates"]] == ["skipped", "selected", "fallback"]
    assert "needs 64 GiB > 15 GiB budget" in chat["candidates"][0]["reason"]
    bad = httpx.get(f"{gateway.base_url}/route", params={"task": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_task"


def test_chunks_reach_client_before_upstream_finishes(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    upstream.configure(chunks=8, chunk_delay_ms=150)
    started = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=8, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 6
    assert arrivals[0] < 0.6, arrivals  # the upstream needs ≥ 1.05 s for all chunks
    assert arrivals[-1] - arrivals[0] > 0.7, arrivals  # spread out, not buffered


def test_completions_pass_through_to_an_upstream_that_has_them(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="auto", prompt="Say hello", max_tokens=8)
    assert completion.object == "text_completion" and completion.choices[0].text


def test_health_and_readiness(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200 and ready.json()["upstream"]["up"] is True


def test_unknown_route_is_openai_404(gateway: GatewayProcess) -> None:
    r = httpx.get(f"{gateway.url}/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
