"""The real Foundry Local runtime behind the gateway (managed mode, the tiny model built by this repo),
driven by the official openai client."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.e2e.test_scheduling import stream_load
from tests.helpers import ROOT, GatewayProcess, require_module

require_module("foundry_local_sdk")
ADMIN = {"Authorization": "Bearer admin"}
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("foundry-cache")


@pytest.fixture(scope="module")
def managed(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(cache_dir),
           "GATEWAY_ADMIN_API_KEY": "admin", "GATEWAY_ACCESS_LOG": "true", "GATEWAY_REGISTRY_WATCH_INTERVAL": "0"}
    log = tmp_path_factory.mktemp("foundry-logs") / "gateway.log"
    with GatewayProcess(registry=ROOT / "models.json", env=env, log_path=log) as gw:
        gw.wait_ready(60)
        yield gw


@pytest.fixture()
def client(managed: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=managed.base_url, api_key="unused", max_retries=0, timeout=60)


def status(gw: GatewayProcess) -> dict[str, object]:
    return httpx.get(f"{gw.url}/admin/status", headers=ADMIN, timeout=5).json()  # type: ignore[no-any-return]


def upstream_url(gw: GatewayProcess) -> str:
    return str(status(gw)["upstream"]["url"])  # type: ignore[index]


def test_chat_through_real_runtime_routes_to_tiny_chat(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO, max_tokens=12,
                                                          extra_headers={"X-Task": "chat"})
    reply = raw.parse()
    assert raw.headers["x-gateway-model"] == "tiny-chat"  # catalog models are not available offline
    assert reply.model == "tiny-chat-generic-cpu:1"
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0


def test_streaming_through_real_runtime(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="auto", messages=HELLO, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_request_without_max_tokens_gets_the_default(managed: GatewayProcess) -> None:
    r = httpx.post(f"{managed.base_url}/chat/completions", json={"messages": HELLO}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 64  # tiny-chat's default_max_tokens
    stream = httpx.post(f"{managed.base_url}/chat/completions", json={"messages": HELLO, "stream": True}, timeout=60)
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("name", ["tiny-chat", "tiny-chat-generic-cpu:1", "TINY-CHAT"])
def test_alias_and_id_both_work(client: openai.OpenAI, name: str) -> None:
    reply = client.chat.completions.create(model=name, messages=HELLO, max_tokens=4)
    assert reply.model == "tiny-chat-generic-cpu:1"


def test_load_on_demand(managed: GatewayProcess, client: openai.OpenAI) -> None:
    unloaded = httpx.get(f"{upstream_url(managed)}/catalogs/local/models/unload/tiny-chat", timeout=30).json()
    assert unloaded["status"] in ("unloaded", "not_loaded")
    # the gateway has not noticed yet: its first request hits "Model not loaded", loads, and succeeds
    reply = client.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=4)
    assert reply.choices[0].message.content is not None
    assert "tiny-chat-generic-cpu:1" in status(managed)["upstream"]["loaded"]  # type: ignore[index]


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)


def test_catalog_model_offline_is_a_clear_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="phi-4-mini", messages=HELLO)
    assert info.value.status_code == 503 and "not available on the upstream" in info.value.message


def test_completions_are_translated(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="auto", prompt="def fib(n):", max_tokens=8)
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    pieces = list(client.completions.create(model="auto", prompt="def fib(n):", max_tokens=8, stream=True))
    assert pieces and all(p.object == "text_completion" for p in pieces)
    assert "".join(p.choices[0].text for p in pieces if p.choices)


def test_n_greater_than_one_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="'n' > 1"):
        client.chat.completions.create(model="auto", messages=HELLO, n=2)


def test_foundry_stream_error_event_becomes_an_http_error(client: openai.OpenAI) -> None:
    # max_tokens beyond the context: Foundry Local answers a stream with 200 and a lone error event
    with pytest.raises(openai.BadRequestError, match="context length"):
        list(client.chat.completions.create(model="auto", messages=HELLO, max_tokens=100_000, stream=True))


# --- the rest of the OpenAI surface on the real runtime (issue 12) ---------------------------------------------


def test_responses_json_on_the_real_runtime(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="auto", input="Say hi", extra_headers={"X-Task": "chat"})
    response = raw.parse()
    assert raw.headers["x-gateway-model"] == "tiny-chat" and raw.headers["x-gateway-task"] == "chat"
    assert response.output_text  # no max_output_tokens sent: the gateway's default made it work
    assert response.usage is not None and 0 < response.usage.output_tokens <= 64
    assert response.status in ("completed", "incomplete")


def test_responses_stream_on_the_real_runtime_reaches_completed(client: openai.OpenAI) -> None:
    """The model decides when it stops (a random-weight model samples its end token now and then): every stream
    ends with its terminal event, and within a bounded number of tries one ends ``response.completed``."""
    ends = []
    for _ in range(20):
        events = list(client.responses.create(model="tiny-chat", input="Say hi", stream=True, max_output_tokens=1024))
        assert events[0].type == "response.created"
        ends.append(events[-1].type)
        assert ends[-1] in ("response.completed", "response.incomplete")
        if ends[-1] == "response.completed":
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert text and events[-1].response.output_text == text  # type: ignore[union-attr]
            break
    assert ends[-1] == "response.completed", ends


def test_stored_responses_on_the_real_runtime(client: openai.OpenAI) -> None:
    first = client.responses.create(model="tiny-chat", input="hi", max_output_tokens=8, store=True)
    assert client.responses.retrieve(first.id).id == first.id
    items = client.responses.input_items.list(first.id)
    assert [item.content[0].text for item in items.data] == ["hi"]  # type: ignore[union-attr]
    follow = client.responses.create(model="tiny-chat", input="again", max_output_tokens=8,
                                     previous_response_id=first.id)
    assert follow.previous_response_id == first.id and follow.store is True
    assert follow.usage is not None and first.usage is not None
    assert follow.usage.input_tokens > first.usage.input_tokens  # the runtime got the whole conversation
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError, match="Previous response with id 'resp_gone' not found"):
        client.responses.create(model="tiny-chat", input="x", max_output_tokens=8, previous_response_id="resp_gone")


def _unit(vector: list[float]) -> float:
    return sum(x * x for x in vector) ** 0.5


def test_embeddings_on_the_real_runtime(client: openai.OpenAI, managed: GatewayProcess) -> None:
    raw = client.embeddings.with_raw_response.create(model="auto", input="hello world")  # the SDK asks for base64
    one = raw.parse()
    assert raw.headers["x-gateway-model"] == "tiny-embed"  # no task header: the embedding model that fits
    assert len(one.data) == 1 and len(one.data[0].embedding) == 128
    assert _unit(one.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    assert one.usage.prompt_tokens > 0  # the runtime says 0: counted with the model's own tokenizer
    listed = client.embeddings.create(model="auto", input=["hello world", "a second text"], encoding_format="float")
    assert [d.index for d in listed.data] == [0, 1]
    assert listed.data[0].embedding == pytest.approx(one.data[0].embedding, abs=1e-5)  # base64 == float
    assert listed.data[1].embedding != pytest.approx(listed.data[0].embedding, abs=1e-3)
    assert 'gateway_tokens_total{model="tiny-embed",task="embeddings",type="input"}' in \
        httpx.get(f"{managed.url}/metrics", timeout=5).text


def test_embedding_input_too_long_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny-embed", input="word " * 5000)
    assert info.value.code == "context_length_exceeded" and "tiny-embed" in info.value.message


def metric(gw: GatewayProcess, name: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_killed_runtime_is_back_within_3_seconds(managed: GatewayProcess) -> None:
    """SIGKILL the runtime: the supervisor sees the exit at once, starts a new one, registers and loads the
    model again, and a request sent right after the kill waits for it instead of failing."""
    before = status(managed)["managed"]
    body = {"messages": HELLO, "max_tokens": 4}
    assert httpx.post(f"{managed.base_url}/chat/completions", json=body, timeout=30).status_code == 200
    killed_at = time.monotonic()
    os.kill(before["pid"], signal.SIGKILL)  # type: ignore[index]
    r = httpx.post(f"{managed.base_url}/chat/completions", json=body, timeout=30)
    recovered_in = time.monotonic() - killed_at
    assert r.status_code == 200, r.text
    assert recovered_in < 3.0, f"first 200 only {recovered_in:.2f}s after the SIGKILL"
    after = status(managed)["managed"]
    assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"] + 1  # type: ignore[index]
    assert metric(managed, "gateway_upstream_restarts_total") >= 1
    assert status(managed)["cooling_down"] == {}  # the restart closed the breaker
    print(f"SIGKILL → 200 in {recovered_in:.2f}s")


RUNNER_WRAPPER = """#!/bin/sh
# Test stand-in for a flaky host: fail one start when asked, or hold starts while asked.
d=$(dirname "$0")
if [ -e "$d/fail" ]; then rm -f "$d/fail"; echo '{"event": "error", "message": "injected start failure"}'; exit 3; fi
while [ -e "$d/hold" ]; do sleep 0.05; done
exec "$@"
"""


@pytest.fixture()
def flaky_host(cache_dir: Path, tmp_path: Path) -> Iterator[tuple[GatewayProcess, Path]]:
    wrapper = tmp_path / "runner.sh"
    wrapper.write_text(RUNNER_WRAPPER)
    wrapper.chmod(0o755)
    env = {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(cache_dir),
           "GATEWAY_ADMIN_API_KEY": "admin", "GATEWAY_FOUNDRY_RUNNER_PREFIX": str(wrapper),
           "GATEWAY_REGISTRY_WATCH_INTERVAL": "0"}
    with GatewayProcess(registry=ROOT / "models.json", env=env, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready(60)
        yield gw, tmp_path


def wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_supervisor_survives_a_failed_restart(flaky_host: tuple[GatewayProcess, Path]) -> None:
    gw, control = flaky_host
    pid = status(gw)["managed"]["pid"]  # type: ignore[index]
    (control / "fail").touch()  # the next start fails (exit 3 before ready)
    os.kill(pid, signal.SIGKILL)
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"messages": HELLO, "max_tokens": 4}, timeout=30)
    assert r.status_code == 200, r.text  # waited through the failed restart and the next, successful one
    managed_state = status(gw)["managed"]
    assert managed_state["restart_failures"] == 1 and managed_state["serving"]  # type: ignore[index]
    assert metric(gw, "gateway_upstream_restart_failures_total") == 1
    assert "injected start failure" in (control / "g.log").read_text()


def test_readyz_is_false_while_the_runtime_is_down(flaky_host: tuple[GatewayProcess, Path]) -> None:
    gw, control = flaky_host
    pid = status(gw)["managed"]["pid"]  # type: ignore[index]
    (control / "hold").touch()  # the restart waits until the test lets it go
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: httpx.get(f"{gw.url}/readyz", timeout=5).status_code == 503)
    body = httpx.get(f"{gw.url}/readyz", headers=ADMIN, timeout=5).json()
    assert body["status"] == "not_ready" and "killed by SIGKILL" in body["upstream"]["error"]
    assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200  # alive: the supervisor is on it
    (control / "hold").unlink()
    assert wait_for(lambda: httpx.get(f"{gw.url}/readyz", timeout=5).status_code == 200)
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"messages": HELLO, "max_tokens": 4}, timeout=30)
    assert r.status_code == 200


def test_adaptive_limit_rises_above_two_on_the_real_runtime(managed: GatewayProcess) -> None:
    """tiny-chat gains throughput from a few requests side by side: under 16 streaming clients the
    controller climbs past the old static limit of 2 (on 2 cores it settles around 3-4)."""
    limits = []
    for _ in range(3):
        asyncio.run(stream_load(managed.base_url, 16, 4, 3000, model="tiny-chat", max_tokens=32))
        limits.append(status(managed)["limiters"]["tiny-chat"]["limit"])  # type: ignore[index]
    measured = status(managed)["limiters"]["tiny-chat"]["measured"]  # type: ignore[index]
    assert max(limits) > 2, (limits, measured)
    assert f'gateway_model_concurrency_limit{{model="tiny-chat"}} {float(limits[-1])}' in httpx.get(
        f"{managed.url}/metrics").text


def test_shutdown_leaves_no_runtime_and_restart_reuses_registration(cache_dir: Path, tmp_path: Path) -> None:
    env = {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(cache_dir),
           "GATEWAY_ADMIN_API_KEY": "admin"}
    for _ in range(2):  # the second start finds the registration persisted in the cache and reuses it
        gw = GatewayProcess(registry=ROOT / "models.json", env=env, log_path=tmp_path / "g.log").start()
        try:
            gw.wait_ready(60)
            runtime_pid = status(gw)["managed"]["pid"]  # type: ignore[index]
            r = httpx.post(f"{gw.base_url}/chat/completions", json={"messages": HELLO, "max_tokens": 4}, timeout=60)
            assert r.status_code == 200
        finally:
            assert gw.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
        assert not psutil.pid_exists(runtime_pid) or psutil.Process(runtime_pid).status() == psutil.STATUS_ZOMBIE
    assert "reused ['tiny-chat-generic-cpu:1', 'tiny-embed-generic-cpu:1']" in (tmp_path / "g.log").read_text()


def test_runtime_exits_when_the_gateway_is_killed(cache_dir: Path, tmp_path: Path) -> None:
    env = {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(cache_dir),
           "GATEWAY_ADMIN_API_KEY": "admin"}
    gw = GatewayProcess(registry=ROOT / "models.json", env=env, log_path=tmp_path / "g.log").start()
    try:
        gw.wait_ready(60)
        runtime_pid = status(gw)["managed"]["pid"]  # type: ignore[index]
        os.kill(gw.pid, signal.SIGKILL)  # no lifespan shutdown: the runtime must notice by itself
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and psutil.pid_exists(runtime_pid):
            if psutil.Process(runtime_pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.1)
        assert not psutil.pid_exists(runtime_pid) or psutil.Process(runtime_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        gw.stop()


def test_runtime_internals_never_reach_the_client(managed: GatewayProcess) -> None:
    """Foundry Local's refusal of a budget over the context quotes its C++ source; the client gets the sense."""
    r = httpx.post(f"{managed.base_url}/chat/completions", timeout=30,
                   json={"model": "tiny-chat", "messages": HELLO, "max_tokens": 100000})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "exceeds the model's maximum context length" in message
    assert ".cc:" not in message and "::" not in message and "http" not in message


def test_the_budget_the_gateway_adds_is_said_and_one_over_the_context_named(managed: GatewayProcess) -> None:
    """Issue 32, item 10: tiny-chat's registry default_max_tokens (64) cut every answer without a word; the answer
    says it now, and a budget over tiny-chat's 2,048-token context is a 400 naming it."""
    plain = httpx.post(f"{managed.base_url}/chat/completions", timeout=60,
                       json={"model": "tiny-chat", "messages": HELLO})
    assert plain.status_code == 200 and plain.headers["x-gateway-default-max-tokens"] == "64"
    asked = httpx.post(f"{managed.base_url}/chat/completions", timeout=60,
                       json={"model": "tiny-chat", "messages": HELLO, "max_tokens": 8})
    assert "x-gateway-default-max-tokens" not in asked.headers
    over = httpx.post(f"{managed.base_url}/chat/completions", timeout=60,
                      json={"model": "tiny-chat", "messages": HELLO, "max_tokens": 100_000})
    assert over.status_code == 400 and over.json()["error"]["code"] == "context_length_exceeded"
    assert "2048 tokens" in over.json()["error"]["message"]
