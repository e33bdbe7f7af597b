"""Faster than calling the runtime directly: no delayed-ACK stall on reused upstream connections, adaptive
per-model concurrency that settles at the runtime's knee, priority classes with ageing, requests grouped by
model when models cannot co-reside, loads nobody waits for undone."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for, write_registry

MESSAGES = [{"role": "user", "content": "hello"}]


def first_content_times(base_url: str, n: int, **body: object) -> list[float]:
    """Seconds to the first content event of ``n`` streams sent one after another on one keep-alive client."""
    times = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            started = time.perf_counter()
            with client.stream("POST", f"{base_url}/chat/completions",
                               json={"messages": MESSAGES, "stream": True, "max_tokens": 8, **body}) as r:
                seen = False
                for line in r.iter_lines():  # read to the end: the connection goes back to the pool
                    if not seen and '"content":"' in line and '"content":""' not in line:
                        times.append(time.perf_counter() - started)
                        seen = True
    return times


@pytest.fixture()
def nagle_upstream(upstream: UpstreamProcess) -> Iterator[UpstreamProcess]:
    upstream.configure(nagle=True, chunks=4)
    yield upstream


@pytest.mark.parametrize("tuning", ["true", "false"])
def test_first_token_is_not_held_on_a_reused_upstream_connection(nagle_upstream: UpstreamProcess,
                                                                  registry_file: Path, tmp_path: Path,
                                                                  tuning: str) -> None:
    """The upstream writes like Foundry Local (Nagle on, head and events in small writes). On a reused
    connection a delayed ACK holds each first event ~40 ms; re-armed TCP_QUICKACK takes the stall away
    (and with the tuning off, the stall is there: the test sees what it claims to)."""
    env = {**FAKE_ENV, "GATEWAY_UPSTREAM_TCP_TUNING": tuning}
    with GatewayProcess(upstream=nagle_upstream.url, registry=registry_file, env=env,
                        log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        times = first_content_times(gw.base_url, 12, model="chat-a")[2:]  # after the first: reused connections
    median = statistics.median(times)
    if tuning == "true":
        assert median < 0.02, times
    else:
        assert median > 0.03, times  # the stall this fixes


async def stream_load(base_url: str, clients: int, seconds: float, max_requests: int, **body: object) -> int:
    """``clients`` keep-alive clients streaming back to back; bounded in time and count. Returns completions."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=30) as http:
            while time.monotonic() < deadline and done < max_requests:
                async with http.stream("POST", f"{base_url}/chat/completions", json={
                        "messages": MESSAGES, "stream": True, "max_tokens": 8, **body}) as r:
                    async for _ in r.aiter_raw():
                        pass
                    if r.status_code == 200:
                        done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done


def admin_status(gw: GatewayProcess) -> dict[str, Any]:
    return httpx.get(f"{gw.url}/admin/status", headers={"Authorization": "Bearer admin"}, timeout=5).json()  # type: ignore[no-any-return]


def test_adaptive_limit_settles_near_the_runtime_knee(upstream: UpstreamProcess, registry_file: Path,
                                                      tmp_path: Path) -> None:
    """The upstream has 4 "cores": past 4 streams in flight every stream slows in proportion. With 16 clients
    pushing, the model's limit climbs from 2 and settles around 4, not at 2 and not at 16."""
    upstream.configure(capacity=4, chunks=16, chunk_delay_ms=4)
    env = {**FAKE_ENV, "GATEWAY_ADMIN_API_KEY": "admin", "GATEWAY_CONCURRENCY_INITIAL": "2"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        limits = []
        for _ in range(4):  # four rounds of load, the limit noted after each
            asyncio.run(stream_load(gw.base_url, 16, 5, 2000, model="chat-a"))
            limits.append(admin_status(gw)["limiters"]["chat-a"]["limit"])
        status = admin_status(gw)["limiters"]["chat-a"]
    assert status["mode"] == "adaptive" and status["recent_decisions"], status
    assert max(limits) >= 4, (limits, status)  # it climbed
    assert all(3 <= limit <= 7 for limit in limits[1:]), (limits, status)  # and stays near the knee


# --- models that cannot co-reside: grouped by model, not swapped per request ---------------------------------

TWO_MODELS = ["alpha-generic-cpu:1", "beta-generic-cpu:1"]
TWO_REGISTRY = [{"name": "alpha", "task": "chat", "min_ram_gb": 6}, {"name": "beta", "task": "chat", "min_ram_gb": 6}]
FOUNDRY_ENV = {"GATEWAY_UPSTREAM_KIND": "foundry", "GATEWAY_HOST_RAM_GB": "10", "GATEWAY_ACCESS_LOG": "false",
               "GATEWAY_ADMIN_API_KEY": "admin"}  # budget 9 GiB: alpha (6) and beta (6) never fit together


@pytest.fixture()
def two_models() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(models=TWO_MODELS, foundry=True) as up:
        up.configure(manage_delay_ms=150, chunks=4, chunk_delay_ms=10)  # a swap costs ~0.3 s, a request ~50 ms
        yield up


def swap_run(up: UpstreamProcess, tmp_path: Path, hold: str) -> tuple[int, int]:
    """4 clients always on alpha and 4 always on beta for 6 s; returns (completed requests, model loads)."""
    registry = write_registry(tmp_path / f"models-{hold}.json", TWO_REGISTRY)
    up.reset()
    up.configure(manage_delay_ms=150, chunks=4, chunk_delay_ms=10)
    with GatewayProcess(upstream=up.url, registry=registry, env={**FOUNDRY_ENV, "GATEWAY_SWAP_HOLD": hold},
                        log_path=tmp_path / f"g-{hold}.log") as gw:
        gw.wait_ready()

        async def both() -> int:
            counts = await asyncio.gather(stream_load(gw.base_url, 4, 6, 5000, model="alpha"),
                                          stream_load(gw.base_url, 4, 6, 5000, model="beta"))
            return sum(counts)

        completed = asyncio.run(both())
    return completed, int(up.stats()["load_calls"])


def test_requests_are_grouped_by_model_instead_of_swapping_per_turn(two_models: UpstreamProcess,
                                                                     tmp_path: Path) -> None:
    fifo_done, fifo_loads = swap_run(two_models, tmp_path, "0")
    grouped_done, grouped_loads = swap_run(two_models, tmp_path, "2")
    fifo_rate, grouped_rate = fifo_loads / fifo_done * 100, grouped_loads / grouped_done * 100
    assert grouped_rate <= fifo_rate / 5, (fifo_done, fifo_loads, grouped_done, grouped_loads)
    assert grouped_done >= 2 * fifo_done, (fifo_done, grouped_done)
    assert min(fifo_done, grouped_done) > 0


def test_a_load_nobody_waits_for_any_more_is_undone(two_models: UpstreamProcess, tmp_path: Path) -> None:
    two_models.configure(manage_delay_ms=800)
    registry = write_registry(tmp_path / "models.json", TWO_REGISTRY)
    with GatewayProcess(upstream=two_models.url, registry=registry, env=FOUNDRY_ENV, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while alpha is still loading
            httpx.post(f"{gw.base_url}/chat/completions", timeout=0.3,
                       json={"model": "alpha", "messages": MESSAGES, "max_tokens": 4})
        assert wait_for(lambda: two_models.stats()["unload_calls"] == 1, 10), two_models.stats()
        assert two_models.stats()["loaded"] == [] and two_models.stats()["load_calls"] == 1


def test_priority_header_is_checked(gateway: GatewayProcess) -> None:
    bad = httpx.post(f"{gateway.base_url}/chat/completions", headers={"X-Priority": "urgent"},
                     json={"messages": MESSAGES, "max_tokens": 4})
    assert bad.status_code == 400 and "X-Priority" in bad.json()["error"]["message"]
    for priority in ("interactive", "batch", "BATCH"):
        ok = httpx.post(f"{gateway.base_url}/chat/completions", headers={"X-Priority": priority},
                        json={"messages": MESSAGES, "max_tokens": 4})
        assert ok.status_code == 200


def test_a_model_still_generating_for_a_client_that_left_is_not_double_booked(two_models: UpstreamProcess,
                                                                                tmp_path: Path) -> None:
    """Foundry Local refuses to unload a model whose generation is still running — as it is for a moment
    after a client leaves mid-stream. The gateway waits for the unload to go through instead of counting
    the model gone and loading the other one next to it (over the RAM budget)."""
    two_models.configure(manage_delay_ms=0, chunks=20, chunk_delay_ms=250)  # the runtime notices a close late
    registry = write_registry(tmp_path / "models.json", TWO_REGISTRY)
    with GatewayProcess(upstream=two_models.url, registry=registry, env=FOUNDRY_ENV, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        body = {"model": "alpha", "stream": True, "max_tokens": 8, "messages": MESSAGES}
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as r:
            for line in r.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # the user stops alpha's answer…
        r = httpx.post(f"{gw.base_url}/chat/completions", timeout=10,  # …and asks beta at once
                       json={"model": "beta", "messages": MESSAGES, "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert two_models.stats()["loaded"] == ["beta-generic-cpu:1"]  # never both at once
