"""Load on demand, single-flight loads, LRU unloading within the RAM budget and idle unloading, against
the fake upstream in Foundry Local mode (the real runtime has one tiny model; these need several)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.metrics import Metrics
from app.core.registry import build_registry
from app.core.settings import load_settings
from app.upstream.client import Upstream
from app.upstream.inventory import Inventory
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for, write_registry

MODELS = ["alpha-generic-cpu:1", "beta-generic-cpu:1", "gamma-generic-cpu:2", "gamma-generic-cpu:1"]
REGISTRY = [
    {"name": "alpha", "task": "chat", "min_ram_gb": 6},
    {"name": "beta", "task": "chat", "min_ram_gb": 6},
    {"name": "gamma", "task": "code", "min_ram_gb": 1, "default_max_tokens": 7},
]
ENV = {"GATEWAY_UPSTREAM_KIND": "foundry", "GATEWAY_HOST_RAM_GB": "10", "GATEWAY_ACCESS_LOG": "false"}


@pytest.fixture()
def foundry_like() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(models=MODELS, foundry=True) as up:
        yield up


def start(up: UpstreamProcess, tmp_path: Path, **env: str) -> GatewayProcess:
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    gw = GatewayProcess(upstream=up.url, registry=registry, env={**ENV, **env}, log_path=tmp_path / "gw.log")
    gw.start().wait_ready()
    return gw


def ask(gw: GatewayProcess, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=30)


def test_names_resolve_to_upstream_ids(foundry_like: UpstreamProcess, tmp_path: Path) -> None:
    gw = start(foundry_like, tmp_path)
    try:
        rows = {r["id"]: r for r in httpx.get(f"{gw.base_url}/models").json()["data"]}
        assert rows["gamma"]["upstream_id"] == "gamma-generic-cpu:2"  # the highest version wins
        r = ask(gw, "gamma")
        assert r.status_code == 200 and r.json()["model"] == "gamma-generic-cpu:2"
        body = foundry_like.stats()["last_bodies"][-1]
        assert body["max_tokens"] == 7  # no max_tokens: the model's default, not Foundry Local's rejection
    finally:
        gw.stop()


def test_burst_on_an_unloaded_model_loads_it_once(foundry_like: UpstreamProcess, tmp_path: Path) -> None:
    gw = start(foundry_like, tmp_path, GATEWAY_MODEL_CONCURRENCY="16", GATEWAY_ADAPTIVE_CONCURRENCY="false")
    try:
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(ask(gw, "alpha", max_tokens=4).status_code))
                   for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert statuses == [200] * 10
        assert foundry_like.stats()["load_calls"] == 1
    finally:
        gw.stop()


def test_loading_beyond_the_budget_unloads_the_least_recently_used(foundry_like: UpstreamProcess,
                                                                   tmp_path: Path) -> None:
    gw = start(foundry_like, tmp_path)  # budget 9 GiB: alpha (6) and beta (6) do not fit together
    try:
        assert ask(gw, "alpha", max_tokens=4).status_code == 200
        assert foundry_like.stats()["loaded"] == ["alpha-generic-cpu:1"]
        assert ask(gw, "gamma", max_tokens=4).status_code == 200  # 6 + 1 fits: nothing unloaded
        assert foundry_like.stats()["loaded"] == ["alpha-generic-cpu:1", "gamma-generic-cpu:2"]
        assert ask(gw, "beta", max_tokens=4).status_code == 200
        assert foundry_like.stats()["loaded"] == ["beta-generic-cpu:1", "gamma-generic-cpu:2"]
    finally:
        gw.stop()


def test_idle_models_are_unloaded(foundry_like: UpstreamProcess, tmp_path: Path) -> None:
    gw = start(foundry_like, tmp_path, GATEWAY_IDLE_UNLOAD_AFTER="1")
    try:
        assert ask(gw, "gamma", max_tokens=4).status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and foundry_like.stats()["loaded"]:
            time.sleep(0.2)
        assert foundry_like.stats()["loaded"] == []
        assert ask(gw, "gamma", max_tokens=4).status_code == 200  # and loads again on demand
    finally:
        gw.stop()


def test_a_model_that_becomes_busy_during_an_unload_is_not_unloaded() -> None:
    """Making room takes several awaited unloads; a model a request starts using meanwhile must be passed
    over (the victims are re-chosen after every unload), not unloaded under a live stream."""
    models = ["a-generic-cpu:1", "b-generic-cpu:1", "c-generic-cpu:1", "d-generic-cpu:1"]
    registry = build_registry([{"name": n, "task": "chat", "min_ram_gb": 3} for n in "abc"]
                              + [{"name": "d", "task": "chat", "min_ram_gb": 6}])
    with UpstreamProcess(models=models, foundry=True) as up:
        up.configure(manage_delay_ms=200)  # loads and unloads take a while, as on a real runtime

        async def scenario() -> None:
            settings = load_settings(upstream_url=up.url, upstream_mode="external")
            upstream = Upstream(settings)
            inventory = Inventory(upstream, Metrics(), budget_gb=lambda: 9.0, load_timeout=30)
            inventory.set_registry(registry)
            assert await inventory.refresh()
            entries = {e.name: e for e in registry}
            for name in "abc":  # loaded and used in this order: a is the least recently used
                await inventory.ensure_loaded(entries[name])
                inventory.acquire(entries[name])
                inventory.release(entries[name])
            unloading = asyncio.Event()
            real_unload = upstream.unload

            async def observed_unload(alias: str, timeout: float = 60.0) -> str:
                unloading.set()
                return await real_unload(alias, timeout)

            upstream.unload = observed_unload  # type: ignore[method-assign]
            load = asyncio.ensure_future(inventory.ensure_loaded(entries["d"]))  # needs two unloads: a, then b
            await unloading.wait()
            inventory.acquire(entries["b"])  # a request starts on b while a is being unloaded
            await load
            await upstream.aclose()

        asyncio.run(scenario())
        loaded = up.stats()["loaded"]
        assert "b-generic-cpu:1" in loaded and "d-generic-cpu:1" in loaded, loaded  # b kept; c went instead
        assert "a-generic-cpu:1" not in loaded and "c-generic-cpu:1" not in loaded, loaded


def test_eviction_by_measured_sizes_spares_pinned_models(foundry_like: UpstreamProcess, tmp_path: Path) -> None:
    """By the registry all three fit together (1 GiB each); measured, each uses 4 GiB of a 9 GiB budget. The
    least recently used is alpha, but it is pinned: beta makes room for gamma."""
    cache = tmp_path / "cache"
    cache.mkdir()
    gib = 1024**3
    (cache / "gateway-footprints.json").write_text(json.dumps({"models": {
        m: {"bytes": 4 * gib} for m in ("alpha-generic-cpu:1", "beta-generic-cpu:1", "gamma-generic-cpu:2")}}))
    registry = write_registry(tmp_path / "models.json", [
        {"name": "alpha", "task": "chat", "min_ram_gb": 1, "pinned": True},
        {"name": "beta", "task": "chat", "min_ram_gb": 1},
        {"name": "gamma", "task": "code", "min_ram_gb": 1},
    ])
    env = {**ENV, "GATEWAY_FOUNDRY_CACHE_DIR": str(cache), "GATEWAY_IDLE_UNLOAD_AFTER": "3"}
    with GatewayProcess(upstream=foundry_like.url, registry=registry, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        route = httpx.get(f"{gw.base_url}/route", params={"model": "gamma"}).json()["candidates"][0]
        assert route["ram_gb"] == 4 and route["ram_source"] == "measured" and "measured 4 GiB" in route["reason"]
        rows = {r["id"]: r for r in httpx.get(f"{gw.base_url}/models").json()["data"]}
        assert rows["alpha"]["measured_ram_gb"] == 4 and rows["alpha"]["pinned"] is True
        for model in ("alpha", "beta", "gamma"):
            assert ask(gw, model, max_tokens=4).status_code == 200
        assert foundry_like.stats()["loaded"] == ["alpha-generic-cpu:1", "gamma-generic-cpu:2"]
        # the idle unload takes gamma, never the pinned alpha
        assert wait_for(lambda: foundry_like.stats()["loaded"] == ["alpha-generic-cpu:1"], timeout=15)


def test_a_measured_size_over_the_budget_is_a_clear_503(foundry_like: UpstreamProcess, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    measured = {"models": {"beta-generic-cpu:1": {"bytes": 12 * 1024**3}}}
    (cache / "gateway-footprints.json").write_text(json.dumps(measured))
    env = {**ENV, "GATEWAY_FOUNDRY_CACHE_DIR": str(cache)}
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    with GatewayProcess(upstream=foundry_like.url, registry=registry, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        r = ask(gw, "beta", max_tokens=4)
        assert r.status_code == 503 and "measured 12 GiB" in r.json()["error"]["message"]


def test_a_model_that_never_fits_beside_the_pinned_ones_blocks_nobody(foundry_like: UpstreamProcess,
                                                                      tmp_path: Path) -> None:
    """Budget 8 GiB, alpha pinned (3 GiB) and loaded: beta (6 GiB) fits alone but never beside alpha. It is a
    503 at routing that says so; requests for gamma and alpha meanwhile are served at once."""
    registry = write_registry(tmp_path / "models.json", [
        {"name": "alpha", "task": "chat", "min_ram_gb": 3, "pinned": True},
        {"name": "beta", "task": "chat", "min_ram_gb": 6},
        {"name": "gamma", "task": "code", "min_ram_gb": 1},
    ])
    env = {**ENV, "GATEWAY_HOST_RAM_GB": "9", "GATEWAY_PRELOAD": "alpha", "GATEWAY_TOTAL_TIMEOUT": "12"}
    with GatewayProcess(upstream=foundry_like.url, registry=registry, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        assert foundry_like.stats()["loaded"] == ["alpha-generic-cpu:1"]
        results: dict[str, httpx.Response] = {}

        def call(model: str) -> None:
            results[model] = ask(gw, model, max_tokens=4)

        threads = [threading.Thread(target=call, args=(m,)) for m in ("beta", "gamma", "alpha")]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert time.monotonic() - started < 6  # nobody waited for beta's impossible turn
        refused = results["beta"]
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert "beta" in message and "pinned" in message and "alpha" in message, message
        assert results["gamma"].status_code == 200 and results["alpha"].status_code == 200
        route = httpx.get(f"{gw.base_url}/route", params={"model": "gamma"}).json()
        assert route["model"] == "gamma"
        auto = httpx.get(f"{gw.base_url}/route").json()  # auto for chat: alpha, beta skipped with the reason
        assert auto["model"] == "alpha"
        beta = next(c for c in auto["candidates"] if c["model"] == "beta")
        assert beta["decision"] == "skipped" and "pinned" in beta["reason"]
