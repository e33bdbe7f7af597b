"""The OpenAI surface beyond chat through the gateway, against the in-repo fake upstream, driven by the official
openai client: Responses (JSON and events), embeddings (string and list, float and base64), audio
transcriptions (multipart, and Foundry Local's JSON naming a file), tool calls rebuilt from text, and
routing by capability. The same against the real runtime: tests/test_foundry_local.py."""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import serve_fake
from tests.fakes.surface import vector
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for, write_registry

REGISTRY: list[dict[str, Any]] = [
    {"name": "chat-a", "task": "chat", "min_ram_gb": 2},
    {"name": "tools-a", "task": "chat", "min_ram_gb": 2, "capabilities": ["chat", "tools"], "parse_tool_calls": True},
    {"name": "embed-big", "task": "embeddings", "min_ram_gb": 64, "notes": "never fits"},
    {"name": "embed-a", "task": "embeddings", "min_ram_gb": 1},
    {"name": "whisper-a", "task": "transcription", "min_ram_gb": 1},
]
MODELS = ["chat-a", "tools-a", "embed-big", "embed-a", "whisper-a"]
HI = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(models=MODELS) as up:
        yield up


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(tmp_path_factory.mktemp("registry") / "models.json", REGISTRY)


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    yield from serve_fake(request, {"GATEWAY_MAX_AUDIO_BYTES": "200000", "GATEWAY_ACCESS_LOG": "true"})


# --- Responses ---------------------------------------------------------------------------------------------------


def test_responses_json_routed_like_chat(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    raw = client.responses.with_raw_response.create(model="auto", input="Say hi", instructions="Be brief.",
                                                    extra_headers={"X-Task": "chat"})
    response = raw.parse()
    assert response.output_text == "Hello from chat-a."
    assert raw.headers["x-gateway-model"] == "chat-a" and raw.headers["x-gateway-task"] == "chat"
    sent = upstream.stats()["last_bodies"][-1]
    assert sent["model"] == "chat-a" and sent["instructions"] == "Be brief." and sent["input"] == "Say hi"
    assert response.usage is not None and response.usage.output_tokens > 0


def test_responses_stream_reaches_completed(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="auto", input="Say hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello from chat-a."


def test_responses_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(model="chat-a", input="Say hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello from chat-a." and final.status == "completed"


def test_responses_fall_back_before_content(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    upstream.fault("status", count=1, model="chat-a", status=503)
    raw = client.responses.with_raw_response.create(model="auto", input="Say hi", stream=False)
    assert raw.headers["x-gateway-model"] == "tools-a"
    assert "fallback" in raw.headers["x-gateway-route"]


def test_responses_stream_failing_before_text_falls_back(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    upstream.fault("stream_error", count=1, model="chat-a")
    raw = client.responses.with_raw_response.create(model="auto", input="Say hi", stream=True)
    assert raw.headers["x-gateway-model"] == "tools-a" and "fallback" in raw.headers["x-gateway-route"]
    assert [e.type for e in raw.parse()][-1] == "response.completed"


def test_responses_bad_input_is_a_clear_400(gateway: GatewayProcess) -> None:
    r = httpx.post(f"{gateway.base_url}/responses", json={"input": "x", "text": "plain"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "text"
    r = httpx.post(f"{gateway.base_url}/responses", json={"model": "auto"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = httpx.post(f"{gateway.base_url}/responses", json={"input": "x", "max_output_tokens": 0}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_output_tokens"


def test_responses_metrics_and_access_log(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    list(client.responses.create(model="chat-a", input="Say hi", stream=True))
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert 'gateway_time_to_first_token_seconds_count{model="chat-a",route="responses",task="chat"}' in text
    assert 'gateway_tokens_total{model="chat-a",task="chat",type="output"}' in text
    assert gateway.log_path is not None
    assert wait_for(lambda: '"route": "responses"' in gateway.log_path.read_text()
                    or '"route":"responses"' in gateway.log_path.read_text())


# --- embeddings ------------------------------------------------------------------------------------------------


def test_embeddings_auto_goes_to_the_best_fitting_embedding_model(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="auto", input="hello world")
    assert raw.headers["x-gateway-model"] == "embed-a"  # embed-big does not fit this host
    assert raw.headers["x-gateway-task"] == "embeddings"
    assert raw.parse().data[0].embedding == pytest.approx(vector("hello world"))  # the SDK asked for base64


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_list_input(gateway: GatewayProcess, encoding: str) -> None:
    texts = ["one", "two", "three"]
    r = httpx.post(f"{gateway.base_url}/embeddings", json={"input": texts, "encoding_format": encoding}, timeout=10)
    assert r.status_code == 200
    rows = r.json()["data"]
    assert [row["index"] for row in rows] == [0, 1, 2]
    for text, row in zip(texts, rows, strict=True):
        got = row["embedding"]
        if encoding == "base64":
            import base64

            raw = base64.b64decode(got)
            got = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert got == pytest.approx(vector(text), rel=1e-6)


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [1, 2, 3]}, "input"), ({"input": []}, "input"), ({}, "input"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"), ({"input": "x", "dimensions": 4}, "dimensions"),
])
def test_embeddings_bad_input(gateway: GatewayProcess, body: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{gateway.base_url}/embeddings", json=body, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_embeddings_on_a_chat_model_names_model_and_feature(gateway: GatewayProcess) -> None:
    r = httpx.post(f"{gateway.base_url}/embeddings", json={"model": "chat-a", "input": "x"}, timeout=10)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "chat-a" in message and "embeddings" in message


# --- audio transcriptions -------------------------------------------------------------------------------------------


def test_transcription_multipart_passthrough(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(model="auto", file=("hello.wav", b"RIFF" + b"\0" * 996))
    assert raw.parse().text == "heard 1000 bytes of hello.wav"
    assert raw.headers["x-gateway-model"] == "whisper-a"
    sent = upstream.stats()["last_bodies"][-1]
    assert sent == {"multipart": True, "model": "whisper-a", "filename": "hello.wav", "size": 1000}


def test_transcription_as_text(client: openai.OpenAI) -> None:
    text = client.audio.transcriptions.create(model="whisper-a", file=("a.mp3", b"x" * 10), response_format="text")
    assert text.strip() == "heard 10 bytes of a.mp3"


def test_transcription_has_its_own_body_limit(gateway: GatewayProcess) -> None:
    files = {"file": ("big.wav", b"\0" * 250_000)}
    r = httpx.post(f"{gateway.base_url}/audio/transcriptions", data={"model": "auto"}, files=files, timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    # the chat limit does not apply: 150 KB of audio is fine under a 200 KB audio limit
    files = {"file": ("ok.wav", b"\0" * 150_000)}
    r = httpx.post(f"{gateway.base_url}/audio/transcriptions", data={"model": "auto"}, files=files, timeout=10)
    assert r.status_code == 200


def test_transcription_bad_uploads(gateway: GatewayProcess) -> None:
    r = httpx.post(f"{gateway.base_url}/audio/transcriptions", json={"model": "auto"}, timeout=10)
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]
    r = httpx.post(f"{gateway.base_url}/audio/transcriptions", data={"model": "auto"},
                   files={"other": ("x", b"1")}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(f"{gateway.base_url}/audio/transcriptions", data={"model": "auto", "response_format": "srt"},
                   files={"file": ("x.wav", b"1")}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = httpx.post(f"{gateway.base_url}/audio/transcriptions", data={"model": "auto", "temperature": "hot"},
                   files={"file": ("x.wav", b"1")}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_transcription_on_foundry_local_names_a_file(tmp_path: Path) -> None:
    """Foundry Local's endpoint takes JSON naming a file on its host: the upload is written, named, removed."""
    models = ["whisper-tiny-generic-cpu:1"]
    registry = write_registry(tmp_path / "models.json", [{"name": "whisper-tiny", "task": "transcription",
                                                          "min_ram_gb": 1}])
    env = {"GATEWAY_UPSTREAM_KIND": "foundry", "GATEWAY_HOST_RAM_GB": "8", "GATEWAY_FOUNDRY_CACHE_DIR":
           str(tmp_path / "cache")}
    with UpstreamProcess(models=models, foundry=True) as up, \
            GatewayProcess(upstream=up.url, registry=registry, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        result = client.audio.transcriptions.create(model="auto", file=("talk.wav", b"\1" * 321), language="en")
        assert result.text.startswith("heard 321 bytes of ") and result.text.endswith(".wav")
        sent = up.stats()["last_bodies"][-1]
        assert sent["model"] == models[0] and sent["language"] == "en"
        assert sent["filename"].startswith(str((tmp_path / "cache" / "uploads").resolve()))
        assert not Path(sent["filename"]).exists()  # deleted once answered
        odd = client.audio.transcriptions.create(model="auto", file=("../a\0b.w v", b"\1" * 5))
        assert odd.text.startswith("heard 5 bytes of ") and "/" not in odd.text[17:]  # no name from the client


# --- tool calls -----------------------------------------------------------------------------------------------------


def test_tools_route_only_to_tool_capable_models(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=HI, tools=TOOLS, max_tokens=16)
    assert raw.headers["x-gateway-model"] == "tools-a"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat-a", messages=HI, tools=TOOLS, max_tokens=16)
    assert "chat-a" in caught.value.message and "tools" in caught.value.message


def test_json_schema_on_a_model_that_cannot_is_a_400(client: openai.OpenAI) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat-a", messages=HI, response_format=schema,  # type: ignore[arg-type]
                                       max_tokens=16)
    assert "chat-a" in caught.value.message and "json_schema" in caught.value.message


def test_tool_call_json_answer(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    upstream.configure(reply="Checking. " + CALL)
    completion = client.chat.completions.create(model="tools-a", messages=HI, tools=TOOLS, max_tokens=64)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."  # what the stream of the same text gives (trailing space dropped)
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "C"}  # type: ignore[union-attr]


def test_tool_call_text_untouched_without_tools(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    upstream.configure(reply=CALL)
    completion = client.chat.completions.create(model="tools-a", messages=HI, max_tokens=64)
    assert completion.choices[0].message.content == CALL


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=1, max_value=len(CALL) * 2 - 1), min_size=1, max_size=12, unique=True))
def test_tool_call_stream_through_the_sdk_helpers(client: openai.OpenAI, upstream: UpstreamProcess,
                                                  cuts: list[int]) -> None:
    """Two calls streamed in pieces cut anywhere: the openai SDK's stream helper rebuilds both."""
    text = CALL + "\n" + CALL.replace("Paris", "Oslo")
    points = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    upstream.configure(pieces=[text[a:b] for a, b in itertools.pairwise(points)])
    arguments_deltas = 0
    with client.chat.completions.stream(model="tools-a", messages=HI, tools=TOOLS, max_tokens=64) as stream:
        for event in stream:
            arguments_deltas += event.type == "tool_calls.function.arguments.delta"
            assert event.type != "content.delta" or not event.delta, "no tool-call text reaches the client"
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Oslo"]  # type: ignore[union-attr]
    assert len({c.id for c in calls}) == 2 and arguments_deltas >= 2
