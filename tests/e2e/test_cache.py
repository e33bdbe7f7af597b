"""The response cache and coalescing through the gateway, against the in-repo fake upstream: the official openai
client and LangChain get the same answers from a hit as from a miss (JSON and streams) apart from
``X-Gateway-Cache``; identical requests in flight share one generation (late joiners, a leaver, a leader that fails
before content); ``Cache-Control``; the scope per key; Redis shared by two gateways; a registry change drops a
model's entries; errors and cut streams are never kept. The same on the real runtime: ``make bench-cache``."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import FAKE_ENV, serve_fake
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for, write_registry

REGISTRY: list[dict[str, Any]] = [
    {"name": "chat-a", "task": "chat", "min_ram_gb": 2},
    {"name": "embed-a", "task": "embeddings", "min_ram_gb": 1},
]
MODELS = ["chat-a", "embed-a"]
ASK = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(models=MODELS) as up:
        yield up


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(tmp_path_factory.mktemp("registry") / "models.json", REGISTRY)


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    yield from serve_fake(request, {"GATEWAY_ACCESS_LOG": "true", "GATEWAY_IDLE_TIMEOUT": "2"})


def _ask(n: int) -> list[dict[str, str]]:
    """A prompt no other test sends (each test its own cache keys)."""
    return [{"role": "user", "content": f"Name a colour, number {n}."}]


def _chat(gw: GatewayProcess, messages: list[dict[str, str]], headers: dict[str, str] | None = None,
          **body: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", headers=headers or {}, timeout=30,
                      json={"model": "chat-a", "messages": messages, "temperature": 0, **body})


def _stream_text(response: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert response.text.rstrip().endswith("data: [DONE]")
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"]), events


def _same_apart_from_identity(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["id"] != b["id"] and a["id"].split("-")[0] == b["id"].split("-")[0]
    assert {k: v for k, v in a.items() if k not in ("id", "created")} == \
        {k: v for k, v in b.items() if k not in ("id", "created")}


# --- hits look like misses ---------------------------------------------------------------------------------------


def test_openai_sdk_json_hit_looks_like_the_miss(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    first = client.chat.completions.with_raw_response.create(model="chat-a", messages=ASK, temperature=0)  # type: ignore[arg-type]
    second = client.chat.completions.with_raw_response.create(model="chat-a", messages=ASK, temperature=0)  # type: ignore[arg-type]
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert upstream.stats()["requests"] == 1
    miss, hit = first.parse(), second.parse()
    _same_apart_from_identity(miss.model_dump(), hit.model_dump())
    assert hit.usage is not None and hit.usage.total_tokens > 0  # what the client would have spent
    for header in ("x-gateway-model", "x-gateway-task", "content-type"):
        assert first.headers[header] == second.headers[header]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_openai_sdk_stream_hit_looks_like_the_miss(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    def run() -> tuple[str, list[Any]]:
        with client.chat.completions.with_streaming_response.create(
                model="chat-a", messages=ASK, temperature=0, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True}) as raw:
            chunks = list(raw.parse())
            return raw.headers["x-gateway-cache"], chunks

    (miss_header, miss), (hit_header, hit) = run(), run()
    assert (miss_header, hit_header) == ("miss", "hit")
    assert upstream.stats()["requests"] == 1
    assert len(miss) == len(hit) and miss[-1].usage == hit[-1].usage and hit[-1].usage is not None
    assert miss[0].choices[0].delta.role == hit[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in hit}) == 1 and hit[0].id != miss[0].id  # one fresh id for the whole answer
    for a, b in zip(miss, hit, strict=True):
        _same_apart_from_identity(a.model_dump(), b.model_dump())
    # a stream and a JSON answer are kept apart, and so are a stream with usage and one without
    plain = client.chat.completions.with_raw_response.create(model="chat-a", messages=ASK, temperature=0,  # type: ignore[arg-type]
                                                             stream=True)
    assert plain.headers["x-gateway-cache"] == "miss"


def test_langchain_json_and_stream_hits_look_like_misses(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")  # a dev dependency: installed by `make test`
    model = langchain_openai.ChatOpenAI(base_url=gateway.base_url, api_key="unused", model="chat-a",
                                        temperature=0, max_retries=0)
    question = [("user", "Name a colour, LangChain.")]
    miss, hit = model.invoke(question), model.invoke(question)
    assert upstream.stats()["requests"] == 1
    assert miss.content == hit.content and miss.content
    assert miss.response_metadata["token_usage"] == hit.response_metadata["token_usage"]
    assert miss.response_metadata["finish_reason"] == hit.response_metadata["finish_reason"] == "stop"
    assert miss.id != hit.id
    streamed = [list(model.stream(question)) for _ in range(2)]
    assert upstream.stats()["requests"] == 2  # one stream generated, the second from the cache
    assert [c.content for c in streamed[0]] == [c.content for c in streamed[1]]
    assert "".join(str(c.content) for c in streamed[1]) == miss.content


def test_embeddings_and_responses_are_cached(client: openai.OpenAI, upstream: UpstreamProcess) -> None:
    a = client.embeddings.with_raw_response.create(model="embed-a", input=["alpha", "beta"])
    b = client.embeddings.with_raw_response.create(model="embed-a", input=["alpha", "beta"])
    assert (a.headers["x-gateway-cache"], b.headers["x-gateway-cache"]) == ("miss", "hit")
    assert a.parse().data[1].embedding == b.parse().data[1].embedding
    first = client.responses.with_raw_response.create(model="chat-a", input="Say hi", temperature=0, store=True)
    again = client.responses.with_raw_response.create(model="chat-a", input="Say hi", temperature=0, store=True)
    assert (first.headers["x-gateway-cache"], again.headers["x-gateway-cache"]) == ("miss", "hit")
    assert upstream.stats()["requests"] == 2
    one, two = first.parse(), again.parse()
    assert one.id != two.id and one.output_text == two.output_text
    # the answer from the cache is a stored response of its own, under its own id
    assert client.responses.retrieve(two.id).output_text == two.output_text
    follow = client.responses.create(model="chat-a", input="And again", previous_response_id=two.id,
                                     temperature=0)
    assert follow.output_text


# --- what is kept, and Cache-Control ------------------------------------------------------------------------------


def test_only_deterministic_requests_by_default(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    warm = _chat(gateway, _ask(1), temperature=0.7)
    assert warm.headers["x-gateway-cache"] == "bypass"
    assert _chat(gateway, _ask(1), temperature=0.7).headers["x-gateway-cache"] == "bypass"
    assert _chat(gateway, _ask(1), temperature=0.7, seed=7).headers["x-gateway-cache"] == "miss"
    assert _chat(gateway, _ask(1), temperature=0.7, seed=7).headers["x-gateway-cache"] == "hit"
    assert _chat(gateway, _ask(1), temperature=0.7, seed=8).headers["x-gateway-cache"] == "miss"
    assert _chat(gateway, _ask(1), max_tokens=5).headers["x-gateway-cache"] == "miss"  # every field is in the key
    assert _chat(gateway, _ask(1), user="someone-else").headers["x-gateway-cache"] == "miss"  # temperature 0
    assert _chat(gateway, _ask(1), user="another").headers["x-gateway-cache"] == "hit"  # `user` is not in the key
    assert upstream.stats()["requests"] == 6


def test_cache_control_directives(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    messages = _ask(2)
    assert _chat(gateway, messages, {"Cache-Control": "no-store"}).headers["x-gateway-cache"] == "bypass"
    assert _chat(gateway, messages).headers["x-gateway-cache"] == "miss"  # no-store kept nothing
    assert _chat(gateway, messages).headers["x-gateway-cache"] == "hit"
    upstream.configure(reply="A fresh answer.")
    fresh = _chat(gateway, messages, {"Cache-Control": "no-cache"})  # not read, but written
    assert fresh.headers["x-gateway-cache"] == "miss"
    kept = _chat(gateway, messages)
    assert kept.headers["x-gateway-cache"] == "hit"
    assert kept.json()["choices"][0]["message"]["content"] == "A fresh answer."
    assert _chat(gateway, messages, {"Cache-Control": "max-age=3600"}).headers["x-gateway-cache"] == "hit"
    assert _chat(gateway, messages, {"Cache-Control": "max-age=0"}).headers["x-gateway-cache"] == "miss"
    assert upstream.stats()["requests"] == 4


def test_errors_and_cut_streams_are_never_kept(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    messages = _ask(3)
    upstream.fault("status", count=1, status=400)
    assert _chat(gateway, messages).status_code == 400
    assert _chat(gateway, messages).headers["x-gateway-cache"] == "miss"
    upstream.fault("stall", count=1, after=1)
    upstream.configure(chunk_delay_ms=1)
    cut = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30,
                     json={"model": "chat-a", "messages": _ask(4), "temperature": 0, "stream": True,
                           "max_tokens": 9})
    assert "error" in cut.text  # the idle timeout turned the stall into an error event
    again = _chat(gateway, _ask(4), stream=True, max_tokens=9)
    assert again.headers["x-gateway-cache"] == "miss" and _stream_text(again)[0]


def test_metrics_count_hits_and_tokens_saved(gateway: GatewayProcess) -> None:
    for _ in range(2):
        _chat(gateway, _ask(5))
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith("gateway_cache_")}
    assert lines['gateway_cache_requests_total{result="hit"}'] >= 1
    assert lines['gateway_cache_requests_total{result="miss"}'] >= 1
    assert lines["gateway_cache_tokens_saved_total"] > 0
    assert lines["gateway_cache_bytes"] > 0


# --- coalescing ---------------------------------------------------------------------------------------------------


def _streams(gw: GatewayProcess, messages: list[dict[str, str]], n: int) -> list[tuple[str, str, int]]:
    """``n`` identical streams at once: (X-Gateway-Cache, the stream's bytes, status) of each."""
    start = threading.Barrier(n)

    def one(_: int) -> tuple[str, str, int]:
        start.wait(10)
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", timeout=30,
                          json={"model": "chat-a", "messages": messages, "temperature": 0, "stream": True}) as r:
            return r.headers.get("x-gateway-cache", ""), r.read().decode(), r.status_code

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _without_identity(stream: str) -> str:
    """A stream's events with their id and created left out (each client gets a fresh one)."""
    return "\n".join(json.dumps({k: v for k, v in json.loads(line[6:]).items() if k not in ("id", "created")})
                     for line in stream.splitlines() if line.startswith("data: {"))


def test_identical_streams_in_flight_share_one_generation(gateway: GatewayProcess,
                                                          upstream: UpstreamProcess) -> None:
    upstream.configure(chunks=12, chunk_delay_ms=60)
    results = _streams(gateway, _ask(6), 8)
    assert upstream.stats()["requests"] == 1
    assert sorted(r[0] for r in results).count("miss") == 1
    assert {r[0] for r in results} <= {"miss", "coalesced", "hit"}
    assert "coalesced" in {r[0] for r in results}
    assert all(r[2] == 200 and r[1].rstrip().endswith("data: [DONE]") for r in results)
    assert len({_without_identity(r[1]) for r in results}) == 1


def _open_stream(gw: GatewayProcess, messages: list[dict[str, str]]) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(timeout=30)
    request = client.build_request("POST", f"{gw.base_url}/chat/completions",
                                   json={"model": "chat-a", "messages": messages, "temperature": 0, "stream": True})
    return client, client.send(request, stream=True)


def test_a_leaver_does_not_stop_the_generation_for_the_others(gateway: GatewayProcess,
                                                             upstream: UpstreamProcess) -> None:
    upstream.configure(chunks=40, chunk_delay_ms=50)
    messages = _ask(7)
    leader_client, leader = _open_stream(gateway, messages)
    assert leader.headers["x-gateway-cache"] == "miss"
    chunks = leader.iter_raw()  # kept: a dropped iterator closes the response
    next(chunks)  # generating
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        followers = [pool.submit(lambda: _chat(gateway, messages, stream=True)) for _ in range(3)]
        assert wait_for(lambda: _coalesced_now(gateway) >= 3, timeout=10)
        leader.close()  # the first client leaves mid-stream
        leader_client.close()
        answers = [f.result() for f in followers]
    assert all(a.headers["x-gateway-cache"] == "coalesced" and _stream_text(a)[0] for a in answers)
    assert len({_without_identity(a.text) for a in answers}) == 1
    stats = upstream.stats()
    assert stats["requests"] == 1 and stats["streams_completed"] == 1 and stats["streams_cancelled"] == 0


def _coalesced_now(gw: GatewayProcess) -> float:
    """Followers waiting on a flight, from the in-flight gauge less the one leader."""
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("gateway_requests_in_flight "):
            return float(line.split()[1]) - 1
    return 0.0


def test_when_everyone_leaves_the_generation_stops(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.configure(chunks=40, chunk_delay_ms=50)
    messages = _ask(8)
    opened = [_open_stream(gateway, messages)]
    chunks = opened[0][1].iter_raw()  # kept: a dropped iterator closes the response
    next(chunks)
    opened.append(_open_stream(gateway, messages))
    assert opened[1][1].headers["x-gateway-cache"] == "coalesced"
    for client, response in opened:
        response.close()
        client.close()
    assert wait_for(lambda: upstream.stats()["streams_cancelled"] == 1, timeout=10)
    assert upstream.stats()["streams_completed"] == 0
    assert _chat(gateway, messages, stream=True).headers["x-gateway-cache"] == "miss"  # nothing was kept


def test_a_leader_failing_before_content_is_retried_by_one_waiter(gateway: GatewayProcess,
                                                                  upstream: UpstreamProcess) -> None:
    upstream.configure(chunks=6, chunk_delay_ms=30)
    upstream.fault("status", count=1, status=400, seconds=0.5)
    results = _streams(gateway, _ask(9), 6)
    statuses = sorted(r[2] for r in results)
    assert statuses == [200] * 5 + [400]
    assert upstream.stats()["requests"] == 2  # the failed generation and one retry, not five
    assert sorted(r[0] for r in results if r[2] == 200).count("miss") == 1


def test_a_leader_that_stops_reading_holds_no_follower(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    """Finding 6 (issue 31): a 12 MB generation; the first client reads its headers and then nothing. Its follower
    got 2.8 MB and then nothing (the generation waited on the stuck client); now the generation goes at the
    upstream's pace, the follower gets all of it, and the stuck client alone is let go (idle timeout: 2 s here)."""
    import socket
    import time

    upstream.configure(reply="x" * 12_000_000, chunks=3000, chunk_delay_ms=1)
    body = json.dumps({"model": "chat-a", "messages": _ask(31), "temperature": 0, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = stuck.recv(4096)  # the headers, and then it reads no more
        assert b" 200 " in head.split(b"\r\n")[0]
        started = time.monotonic()
        follower = _chat(gateway, _ask(31), stream=True)
        took = time.monotonic() - started
        assert follower.status_code == 200 and follower.headers["x-gateway-cache"] in ("coalesced", "hit")
        text, _ = _stream_text(follower)
        assert len(text) == 12_000_000 and took < 25
    assert upstream.stats()["requests"] == 1


# --- scope, sharing, registry changes ----------------------------------------------------------------------------


def test_the_cache_is_per_key_unless_shared(tmp_path: Path, upstream: UpstreamProcess, registry_file: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "team-a", "key": "a-secret"},
                                         {"name": "team-b", "key": "b-secret"}]}))
    env = {**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys)}
    a, b = {"Authorization": "Bearer a-secret"}, {"Authorization": "Bearer b-secret"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env) as gw:
        seen = [_chat(gw, ASK, who).headers["x-gateway-cache"] for who in (a, a, b, b)]
        assert seen == ["miss", "hit", "miss", "hit"]
    with GatewayProcess(upstream=upstream.url, registry=registry_file,
                        env={**env, "GATEWAY_CACHE_SCOPE": "shared"}) as gw:
        assert [_chat(gw, ASK, who).headers["x-gateway-cache"] for who in (a, b)] == ["miss", "hit"]


def test_redis_shares_the_cache_between_gateways(redis_url: str, upstream: UpstreamProcess,
                                                 registry_file: Path) -> None:
    env = {**FAKE_ENV, "GATEWAY_REDIS_URL": redis_url}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env) as one, \
            GatewayProcess(upstream=upstream.url, registry=registry_file, env=env) as two:
        messages = _ask(10)
        assert _chat(one, messages).headers["x-gateway-cache"] == "miss"
        hit = _chat(two, messages)
        assert hit.headers["x-gateway-cache"] == "hit"
        assert _chat(one, messages, stream=True).headers["x-gateway-cache"] == "miss"
        streamed = _chat(two, messages, stream=True)
        assert streamed.headers["x-gateway-cache"] == "hit" and _stream_text(streamed)[0]
        assert upstream.stats()["requests"] == 2


def test_a_registry_change_drops_the_models_entries(tmp_path: Path, upstream: UpstreamProcess) -> None:
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    with GatewayProcess(upstream=upstream.url, registry=registry, env=FAKE_ENV) as gw:
        messages = _ask(11)
        assert [_chat(gw, messages).headers["x-gateway-cache"] for _ in range(2)] == ["miss", "hit"]
        embedded = [httpx.post(f"{gw.base_url}/embeddings", json={"model": "embed-a", "input": "x"}, timeout=10)
                    for _ in range(2)]
        assert embedded[1].headers["x-gateway-cache"] == "hit"
        reloads = _reloads(gw)
        write_registry(registry, [{**REGISTRY[0], "notes": "now with a new prompt template"}, REGISTRY[1]])
        assert wait_for(lambda: _reloads(gw) > reloads, timeout=10)
        assert _chat(gw, messages).headers["x-gateway-cache"] == "miss"  # chat-a changed: its answers dropped
        again = httpx.post(f"{gw.base_url}/embeddings", json={"model": "embed-a", "input": "x"}, timeout=10)
        assert again.headers["x-gateway-cache"] == "hit"  # the unchanged model's entries stay


def _reloads(gw: GatewayProcess) -> float:
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        if line.startswith('gateway_registry_reloads_total{result="ok"}'):
            return float(line.split()[1])
    return 0.0


# --- the semantic cache --------------------------------------------------------------------------------------------


def test_semantic_cache_serves_a_close_question_with_the_same_context(upstream: UpstreamProcess,
                                                                      registry_file: Path) -> None:
    """With the fake's deterministic embeddings (bag of words): the same words in another case and punctuation are
    close; another question, or the same question under another system prompt, is not."""
    def ask(question: str, system: str = "Be brief.", **body: Any) -> httpx.Response:
        return _chat(gw, [{"role": "system", "content": system}, {"role": "user", "content": question}], **body)

    with GatewayProcess(upstream=upstream.url, registry=registry_file,
                        env={**FAKE_ENV, "GATEWAY_CACHE_SEMANTIC": "0.95"}) as gw:
        assert ask("What is the capital of France?").headers["x-gateway-cache"] == "miss"
        close = ask("what is the capital of france")
        assert close.headers["x-gateway-cache"] == "hit"
        assert float(close.headers["x-gateway-cache-similarity"]) >= 0.95
        assert ask("What is the capital of Spain?").headers["x-gateway-cache"] == "miss"
        assert ask("what is the capital of france", system="Answer in French.").headers["x-gateway-cache"] == "miss"
        assert ask("what is the capital of france", temperature=0.5).headers["x-gateway-cache"] == "bypass"
        streamed = [ask("What IS the capital of Spain", stream=True) for _ in range(2)]
        assert [s.headers["x-gateway-cache"] for s in streamed] == ["miss", "hit"]
        assert _stream_text(streamed[0])[0] == _stream_text(streamed[1])[0]
        assert upstream.stats()["by_model"]["chat-a"] == 5  # France, Spain, in French, at 0.5, Spain streamed


def test_semantic_matches_are_off_by_default(gateway: GatewayProcess) -> None:
    for question in ("Which colour is the sky?", "which colour is the sky"):
        assert _chat(gateway, [{"role": "user", "content": question}]).headers["x-gateway-cache"] == "miss"


def test_the_cli_lists_counts_and_flushes_the_response_cache(upstream: UpstreamProcess, registry_file: Path,
                                                            tmp_path: Path) -> None:
    """Issue 32, item 9: `foundry-gateway cache ls|stats|flush` (admin key), one team key's with --key; Foundry
    Local's model cache moved to `foundry-gateway models cache`."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "team-a", "key": "a-secret-key"},
                                         {"name": "team-b", "key": "b-secret-key"}]}))
    env_of_gateway = {**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys), "GATEWAY_ADMIN_API_KEY": "the-admin-key"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, log_path=tmp_path / "gw.log",
                        env=env_of_gateway) as gw:
        for key, n in (("a-secret-key", 41), ("a-secret-key", 42), ("b-secret-key", 43)):
            assert _chat(gw, _ask(n), headers={"Authorization": f"Bearer {key}"}).status_code == 200
        env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_API_KEY": "the-admin-key"}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "app.cli", "cache", *args, "--gateway", gw.url], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=60)

        stats = json.loads(cli("stats", "--json").stdout)
        assert stats["entries"] == 3 and stats["by_key"] == {"team-a": 2, "team-b": 1} and stats["where"] == "process"
        listed = cli("ls", "--key", "team-a")
        assert listed.returncode == 0 and listed.stdout.count("\tteam-a\t") == 2
        assert "Name a colour" not in listed.stdout  # never the text
        flushed = json.loads(cli("flush", "--key", "team-a", "--json").stdout)
        assert flushed["flushed"] == 2
        assert json.loads(cli("stats", "--json").stdout)["by_key"] == {"team-b": 1}
        assert _chat(gw, _ask(43), headers={"Authorization": "Bearer b-secret-key"}).headers["x-gateway-cache"] == "hit"
        refused = subprocess.run([sys.executable, "-m", "app.cli", "cache", "ls", "--gateway", gw.url], cwd=ROOT,
                                 env={**env, "GATEWAY_API_KEY": "a-secret-key"}, capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 1 and "401" in refused.stderr  # the admin key's
    moved = subprocess.run([sys.executable, "-m", "app.cli", "models", "cache", "dir"], cwd=ROOT,
                           env={**os.environ, "GATEWAY_ENV_FILE": "/nonexistent"}, capture_output=True, text=True,
                           timeout=60)
    assert moved.returncode == 0 and moved.stdout.strip()
