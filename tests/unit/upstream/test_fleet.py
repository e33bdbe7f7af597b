"""Beyond one host: a front (GATEWAY_NODES) over node gateways. Placement policy and discovery as pure unit
tests; the front over real node gateways (each in front of the fake upstream) for forwarding, streaming,
ejection and re-admission. The real runtime: tests/test_foundry_fleet.py."""

from __future__ import annotations

import asyncio

from app.core.settings import load_settings
from app.upstream.fleet import Fleet, expand

# --- placement (pure) ----------------------------------------------------------------------------------------


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
