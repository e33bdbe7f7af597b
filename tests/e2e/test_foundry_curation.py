"""The curation loop on the real runtime: `bench --update-registry` writes what it measured into the team's
models.json; people rate the outputs (`bench --rate`); with GATEWAY_RANK_BY=rating the routed model changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, GatewayProcess, require_module, wait_for, write_registry

require_module("foundry_local_sdk")
PROMPTS = [{"id": "capital", "task": "chat", "prompt": "Capital of France?", "reference": "Paris"},
           {"id": "hello", "task": "chat", "prompt": "Say hello.", "reference": "Hello"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path, Path]]:
    tmp = tmp_path_factory.mktemp("curation")
    registry = write_registry(tmp / "models.json", [
        {"name": "tiny-chat", "task": "chat", "min_ram_gb": 0.25, "upstream_id": "tiny-chat-generic-cpu:1",
         "path": str(ROOT / "models" / "tiny-chat"), "default_max_tokens": 16, "x-owner": "curation team"},
        {"name": "tiny-chat-b", "task": "chat", "min_ram_gb": 0.25, "upstream_id": "tiny-chat-b-generic-cpu:1",
         "path": str(ROOT / "models" / "tiny-chat-b"), "default_max_tokens": 16},
    ])
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    env = {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(tmp / "cache"),
           "GATEWAY_RANK_BY": "rating", "GATEWAY_CACHE": "deterministic"}  # bench's temperature 0 is cacheable
    with GatewayProcess(registry=registry, env=env, log_path=tmp / "gw.log") as gw:
        gw.wait_ready(90)
        yield gw, registry, prompts


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "CI": "true"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def routed(gw: GatewayProcess) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{gw.base_url}/chat/completions", json=body, headers={"X-Task": "chat"}, timeout=30)


def _counted(gw: GatewayProcess, name: str) -> float:
    """A metric's samples summed: the requests that reached the runtime, or the cache's hits."""
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_second_bench_run_reaches_the_runtime_not_the_response_cache(setup: tuple[GatewayProcess, Path, Path],
                                                                       tmp_path: Path) -> None:
    """Issue 32, item 1, on the real runtime: a second run of the same prompts at temperature 0 — which the cache
    on this gateway answers when asked plainly — is generated again, each request, by Foundry Local."""
    gw, _, prompts = setup
    plain = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
             "temperature": 0}
    for _ in range(2):
        httpx.post(f"{gw.base_url}/chat/completions", json=plain, timeout=60).raise_for_status()
    assert _counted(gw, 'gateway_cache_requests_total{result="hit"}') >= 1  # the cache is on and answers this
    for run in ("first", "second"):
        reached = _counted(gw, "gateway_upstream_duration_seconds_count")
        hits = _counted(gw, 'gateway_cache_requests_total{result="hit"}')
        done = cli("bench", "--gateway", gw.url, "--prompts", str(prompts), "--repeat", "1", "--max-tokens", "4",
                   "--model", "tiny-chat", "--out", str(tmp_path / run), "--json")
        assert done.returncode == 0, done.stderr
        assert _counted(gw, "gateway_upstream_duration_seconds_count") - reached == len(PROMPTS), run
        assert _counted(gw, 'gateway_cache_requests_total{result="hit"}') == hits, run
        assert {r["cache"] for r in json.loads(done.stdout)["results"]} == {"bypass"}


def test_bench_writes_measured_and_ratings_change_the_route(setup: tuple[GatewayProcess, Path, Path],
                                                            tmp_path: Path) -> None:
    gw, registry, prompts = setup
    before = routed(gw)
    assert before.headers["x-gateway-model"] == "tiny-chat"  # nothing rated: registry order
    assert "not rated" in httpx.get(f"{gw.base_url}/route", params={"task": "chat"}).json()["explanation"]

    done = cli("bench", "--gateway", gw.url, "--prompts", str(prompts), "--repeat", "1", "--max-tokens", "8",
               "--out", str(tmp_path), "--update-registry", str(registry))
    assert done.returncode == 0, done.stderr
    entries = {e["name"]: e for e in json.loads(registry.read_text())}
    measured = entries["tiny-chat"]["measured"]
    assert measured["requests"] == 2 and measured["errors"] == 0
    assert 0 < measured["latency_ms"]["p50"] <= measured["latency_ms"]["p95"] and measured["tokens_per_s"] > 0
    assert measured["prompt_set"]["prompts"] == 2 and len(measured["prompt_set"]["sha256"]) == 64
    assert measured["host"]["cores"] and measured["gateway_version"] and measured["ram_gb"] > 0
    assert 0 <= measured["reference_score"]["mean"] <= 1 and "rating" not in measured  # nobody rated yet
    assert entries["tiny-chat"]["x-owner"] == "curation team"  # fields the gateway does not know stay

    results = next(tmp_path.glob("bench-*.json"))
    answers = "2\n2\n2\n" * 2 + "5\n5\n5\n" * 2  # tiny-chat's two outputs, then tiny-chat-b's
    rated = cli("bench", "--rate", str(results), "--update-registry", str(registry), stdin=answers)
    assert rated.returncode == 0, rated.stderr
    entries = {e["name"]: e for e in json.loads(registry.read_text())}
    assert entries["tiny-chat-b"]["measured"]["rating"]["mean"] == 5.0

    assert wait_for(lambda: routed(gw).headers["x-gateway-model"] == "tiny-chat-b", timeout=15)  # reloaded
    after = routed(gw)
    assert "rating 5.0 (n=6) for chat" in after.headers["x-gateway-route"]
    # a budget every measured model is over: all skipped, and the 503 says why
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                   headers={"X-Task": "chat", "X-Latency-Budget-Ms": "0.001"}, timeout=30)
    assert r.status_code == 503 and "> budget 0" in r.json()["error"]["message"]
