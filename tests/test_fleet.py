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

from app.core.settings import load_settings
from app.policy.placement import ModelState, NodeView, place
from app.upstream.fleet import Fleet, expand
from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, wait_for, write_registry

# --- placement (pure) ----------------------------------------------------------------------------------------


def node(name: str, *, loaded: bool = False, busy: int = 0, limit: int = 4, healthy: bool = True,
         fits: bool = True, available: bool | None = True, front: int = 0) -> NodeView:
    state = ModelState(available=available, fits=fits, loaded=loaded, in_flight=busy, limit=limit)
    return NodeView(name, healthy, {"m": state}, {"m": front} if front else {})


def test_prefers_a_node_with_the_model_loaded_and_room() -> None:
    placed = place("m", [node("a"), node("b", loaded=True, busy=3), node("c", loaded=True, busy=1)])
    assert placed.order == ("c", "b", "a")
    assert placed.explanation == "node c: loaded there, 1/4 busy"


def test_scales_out_when_every_loaded_node_is_saturated() -> None:
    placed = place("m", [node("a", loaded=True, busy=4), node("b")])
    assert placed.order == ("b", "a")
    assert "scaling out" in placed.explanation
    assert dict((n, r) for n, _, r in placed.verdicts)["a"] == "loaded there but saturated, 4/4 busy"


def test_the_fronts_own_requests_count_before_the_next_poll() -> None:
    placed = place("m", [node("a", loaded=True, busy=0, front=4), node("b", loaded=True, busy=2)])
    assert placed.order == ("b", "a")


def test_skips_down_missing_and_too_big_with_reasons() -> None:
    placed = place("m", [node("a", healthy=False), node("b", available=False), node("c", fits=False), node("d")])
    assert placed.order == ("d",)
    reasons = {n: r for n, d, r in placed.verdicts if d == "skipped"}
    assert reasons == {"a": "down", "b": "does not have it", "c": "does not fit its RAM budget"}


def test_ties_go_round_the_nodes_not_to_the_first_by_name() -> None:
    nodes = [node("a", loaded=True), node("b", loaded=True), node("c", loaded=True)]
    assert [place("m", nodes, turn=turn).order[0] for turn in range(4)] == ["a", "b", "c", "a"]
    busy = [node("a", loaded=True, busy=1), node("b", loaded=True), node("c", loaded=True)]
    assert {place("m", busy, turn=turn).order[0] for turn in range(3)} == {"b", "c"}  # the least busy still first


def test_a_node_where_the_model_cools_down_is_skipped() -> None:
    cooling = NodeView("a", True, {"m": ModelState(available=True, loaded=True, limit=4, cooling_down=True)})
    placed = place("m", [cooling, node("b")])
    assert placed.order == ("b",)
    assert ("a", "skipped", "the model is cooling down there after failures") in placed.verdicts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_eject_an_outlier_until_its_time_is_up() -> None:
    clock = Clock()
    fleet = Fleet(load_settings(nodes=["http://10.0.0.1:8080"], node_eject_after=3, node_eject_seconds=10),
                  resolver=lambda host, port: [host], clock=clock)
    member = fleet.nodes["10.0.0.1:8080"]
    member.healthy, member.why_down = True, ""
    fleet.failed(member.name, "timeout")
    fleet.succeeded(member.name)  # a success in between: the count starts again
    fleet.failed(member.name, "timeout")
    fleet.failed(member.name, "timeout")
    assert member.healthy
    fleet.failed(member.name, "timeout")
    assert not member.healthy and "3 consecutive failures" in member.why_down
    assert not fleet.may_admit(member)  # a good poll does not bring it back yet
    clock.now += 10
    assert fleet.may_admit(member)
    member.healthy, member.why_down = True, ""
    for _ in range(3):
        fleet.failed(member.name, "timeout")
    clock.now += 10
    assert not fleet.may_admit(member)  # ejected again: for twice as long
    clock.now += 10
    assert fleet.may_admit(member)
    asyncio.run(fleet.aclose())


# --- discovery (resolver injected) ---------------------------------------------------------------------------


def test_one_name_several_addresses_is_several_nodes() -> None:
    addresses = {"nodes.svc": ["10.0.0.2", "10.0.0.1"], "solo": []}
    found = expand(["http://nodes.svc:8080", "http://solo:9000/"], lambda host, port: addresses[host])
    assert found == {"10.0.0.2:8080": "http://10.0.0.2:8080", "10.0.0.1:8080": "http://10.0.0.1:8080",
                     "solo:9000": "http://solo:9000"}


def test_a_name_that_stops_resolving_keeps_its_nodes() -> None:
    addresses = ["10.0.0.1", "10.0.0.2"]
    fleet = Fleet(load_settings(nodes=["http://nodes.svc:8080"]), resolver=lambda host, port: list(addresses))
    addresses.clear()  # a DNS hiccup
    assert fleet.refresh_names() == [] and sorted(fleet.nodes) == ["10.0.0.1:8080", "10.0.0.2:8080"]
    asyncio.run(fleet.aclose())


def test_names_are_re_resolved_nodes_join_and_leave() -> None:
    addresses = ["10.0.0.1"]
    settings = load_settings(nodes=["http://nodes.svc:8080"])
    fleet = Fleet(settings, resolver=lambda host, port: list(addresses))
    assert list(fleet.nodes) == ["10.0.0.1:8080"]
    addresses[:] = ["10.0.0.1", "10.0.0.3"]
    fleet.refresh_names()
    assert sorted(fleet.nodes) == ["10.0.0.1:8080", "10.0.0.3:8080"] and not fleet.nodes["10.0.0.3:8080"].healthy
    addresses[:] = ["10.0.0.3"]
    fleet.refresh_names()
    assert list(fleet.nodes) == ["10.0.0.3:8080"]
    asyncio.run(fleet.aclose())


# --- a front over two node gateways --------------------------------------------------------------------------

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
    assert shown.returncode == 0 and "chat-a on the nodes" in shown.stdout
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
