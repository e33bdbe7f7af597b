"""Beyond one host: a front (GATEWAY_NODES) over node gateways. Placement policy and discovery as pure unit
tests; the front over real node gateways (each in front of the fake upstream) for forwarding, streaming,
ejection and re-admission. The real runtime: tests/test_foundry_fleet.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, wait_for, write_registry

# --- placement (pure) ----------------------------------------------------------------------------------------


REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}, {"name": "chat-b", "task": "chat", "min_ram_gb": 1}]


HI = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[tuple[GatewayProcess, list[GatewayProcess], list[UpstreamProcess]]]:
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up1, UpstreamProcess(models=["chat-a", "chat-b"]) as up2:
        for up in (up1, up2):
            up.configure(chunks=6, chunk_delay_ms=20)
        nodes = [GatewayProcess(upstream=up.url, registry=registry, env=FAKE_ENV, log_path=tmp_path / f"n{i}.log")
                 for i, up in enumerate((up1, up2))]
        for n in nodes:
            n.start().wait_ready()
        env = {**FAKE_ENV, "GATEWAY_NODES": ",".join(n.url for n in nodes), "GATEWAY_NODE_POLL_INTERVAL": "0.2",
               "GATEWAY_ADMIN_API_KEY": "admin", "GATEWAY_HOST_RAM_GB": "0.5"}  # a small front: nodes' budgets count
        front = GatewayProcess(registry=registry, env=env, log_path=tmp_path / "front.log")
        try:
            front.start().wait_ready()
            yield front, nodes, [up1, up2]
        finally:
            front.stop()
            for n in nodes:
                n.stop()


def ask(front: GatewayProcess, stream: bool = False) -> httpx.Response:
    body = {"model": "auto", "messages": HI, "max_tokens": 8, "stream": stream}
    return httpx.post(f"{front.base_url}/chat/completions", json=body, timeout=30)


async def burst(front: GatewayProcess, count: int) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as client:
        async def one() -> str:
            body = {"model": "auto", "messages": HI, "max_tokens": 8, "stream": True}
            async with client.stream("POST", f"{front.base_url}/chat/completions", json=body) as r:
                await r.aread()
                assert r.status_code == 200 and b"data: [DONE]" in await r.aread()
                return r.headers["x-gateway-node"]
        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_front_forwards_streams_and_spreads_load(fleet: tuple[GatewayProcess, list[GatewayProcess],
                                                              list[UpstreamProcess]]) -> None:
    front, nodes, _ = fleet
    r = ask(front)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello from chat-a."
    assert r.headers["x-gateway-node"] in {n.url.removeprefix("http://") for n in nodes}
    assert "node " in r.headers["x-gateway-route"]
    seen = set(asyncio.run(burst(front, 8)))
    assert seen == {n.url.removeprefix("http://") for n in nodes}  # concurrent load reaches both
    route = httpx.get(f"{front.base_url}/route", params={"task": "chat"}).json()
    assert route["node"] and len(route["nodes"]) == 2
    models = {m["id"]: m for m in httpx.get(f"{front.base_url}/models").json()["data"]}
    assert set(models["chat-a"]["nodes"]) == {n.url.removeprefix("http://") for n in nodes}
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "app.cli", "select", "--task", "chat", "--gateway", front.url],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "node\tdecision\twhy" in shown.stdout
    listed = subprocess.run([sys.executable, "-m", "app.cli", "models", "--gateway", front.url], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and nodes[1].url.removeprefix("http://") in listed.stdout


def test_a_dead_node_is_ejected_and_comes_back(fleet: tuple[GatewayProcess, list[GatewayProcess],
                                                            list[UpstreamProcess]]) -> None:
    front, nodes, _ = fleet
    dead = nodes[0]
    name = dead.url.removeprefix("http://")
    os.kill(dead.pid, signal.SIGKILL)
    dead.proc.wait(5)  # type: ignore[union-attr]
    for _ in range(6):  # every request still answered: the dead node's connection refused → the other node
        r = ask(front)
        assert r.status_code == 200 and r.headers["x-gateway-node"] != name
    assert f'gateway_node_up{{node="{name}"}} 0.0' in httpx.get(f"{front.url}/metrics").text
    dead.start().wait_ready()  # back on the same port
    assert wait_for(lambda: f'gateway_node_up{{node="{name}"}} 1.0' in httpx.get(f"{front.url}/metrics").text)
    assert name in set(asyncio.run(burst(front, 8)))  # traffic returns to it


def test_a_node_that_never_answers_is_ejected_after_consecutive_timeouts(tmp_path: Path) -> None:
    """Node 0 answers its status polls but never its requests (a hung runtime): after three timeouts it is
    ejected, and requests go straight to node 1 instead of waiting for node 0 first."""
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    with UpstreamProcess(models=["chat-a", "chat-b"]) as hung, UpstreamProcess(models=["chat-a", "chat-b"]) as up:
        hung.fault("slow_first_byte", seconds=60)
        nodes = [GatewayProcess(upstream=u.url, registry=registry, env=FAKE_ENV, log_path=tmp_path / f"n{i}.log")
                 for i, u in enumerate((hung, up))]
        for n in nodes:
            n.start().wait_ready()
        env = {**FAKE_ENV, "GATEWAY_NODES": ",".join(n.url for n in nodes), "GATEWAY_NODE_POLL_INTERVAL": "0.2",
               "GATEWAY_HOST_RAM_GB": "0.5", "GATEWAY_FIRST_BYTE_TIMEOUT": "0.4", "GATEWAY_QUEUE_TIMEOUT": "0.3",
               "GATEWAY_LOAD_TIMEOUT": "0.3", "GATEWAY_NODE_EJECT_AFTER": "3", "GATEWAY_NODE_EJECT_SECONDS": "60"}
        front = GatewayProcess(registry=registry, env=env, log_path=tmp_path / "front.log")
        try:
            front.start().wait_ready()
            hung_name = nodes[0].url.removeprefix("http://")
            up_metric = f'gateway_node_up{{node="{hung_name}"}} 1.0'
            for _ in range(40):  # node 0 gets its share of first tries (ties rotate) until it is ejected
                r = ask(front)
                assert r.status_code == 200 and r.headers["x-gateway-node"] != hung_name
                if up_metric not in httpx.get(f"{front.url}/metrics").text:
                    break
            route = httpx.get(f"{front.base_url}/route", params={"task": "chat"}).json()
            verdict = next(n for n in route["nodes"] if n["node"] == hung_name)
            assert verdict["decision"] == "skipped" and "consecutive failures" in verdict["reason"], verdict
            assert f'gateway_node_up{{node="{hung_name}"}} 0.0' in httpx.get(f"{front.url}/metrics").text
        finally:
            front.stop()
            for n in nodes:
                n.stop()


def test_a_429_passes_its_retry_after_on_and_never_opens_the_breaker(upstream: UpstreamProcess,
                                                                    gateway: GatewayProcess) -> None:
    upstream.fault("status", count=5, status=429, retry_after=7)
    for _ in range(5):  # more than the breaker's 3 failures in a row
        r = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30,
                       json={"model": "chat-b", "messages": HI, "max_tokens": 4})
        assert r.status_code == 429 and r.headers.get("retry-after") == "7", (r.status_code, r.headers)
    assert httpx.post(f"{gateway.base_url}/chat/completions", timeout=30,
                      json={"model": "chat-b", "messages": HI, "max_tokens": 4}).status_code == 200
    rows = {row["id"]: row for row in httpx.get(f"{gateway.base_url}/models").json()["data"]}
    assert rows["chat-b"]["cooling_down"] is False


def test_a_request_id_that_is_not_visible_ascii_is_replaced_never_a_500(
        fleet: tuple[GatewayProcess, list[GatewayProcess], list[UpstreamProcess]]) -> None:
    front, nodes, _ = fleet
    for gateway in (front, nodes[0]):
        for sent in ("réquête-1".encode(), b"tab\there", b"\xff\xfe", "a" * 300):
            r = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30, headers={"x-request-id": sent},
                           json={"model": "auto", "messages": HI, "max_tokens": 4})
            assert r.status_code == 200, (sent, r.text)
            echoed = r.headers["x-request-id"]
            assert echoed and all("!" <= c <= "~" for c in echoed) and len(echoed) <= 128
        kept = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30, headers={"x-request-id": "trace-42"},
                          json={"model": "auto", "messages": HI, "max_tokens": 4})
        assert kept.headers["x-request-id"] == "trace-42"


def test_a_front_whose_nodes_are_all_down_says_so_and_asks_for_a_retry(tmp_path: Path) -> None:
    """Review of issue 32: with no healthy node the front took "what the fleet has" as nothing, and answered that
    the models were not on the upstream, with `foundry-gateway pull` and never to retry."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        env = {**FAKE_ENV, "GATEWAY_NODES": f"http://127.0.0.1:{port}", "GATEWAY_NODE_POLL_INTERVAL": "0.2",
               "GATEWAY_QUEUE_TIMEOUT": "0.3"}
        with GatewayProcess(registry=write_registry(tmp_path / "models.json", REGISTRY), env=env,
                            log_path=tmp_path / "front.log") as front:
            r = ask(front)  # a node is down until a status poll answers, and none can
    error = r.json()["error"]
    assert r.status_code == 503 and "pull" not in error["message"], error
    assert r.headers.get("x-should-retry") != "false" and "retry-after" in r.headers, dict(r.headers)
