"""Conversation state the gateway owns, on the real runtime (issue 24): a front over two managed nodes keeps its
clients' stored responses — read back by the key that made them, never by another — and a follow-up with
``previous_response_id`` is answered with the whole conversation after the node that answered first is killed; a
single gateway's follow-up works after its runtime is killed, and after the gateway itself restarts."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT, GatewayProcess, require_module

require_module("foundry_local_sdk")
A, B = "team-a-secret-key", "team-b-secret-key"
KEYS = {"keys": [{"name": "team-a", "key": A}, {"name": "team-b", "key": B}]}


def ask(gw: GatewayProcess, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/responses", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "tiny-chat", "max_output_tokens": 8, **body})


def read(gw: GatewayProcess, key: str, path: str) -> httpx.Response:
    return httpx.get(f"{gw.base_url}/responses/{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[tuple[GatewayProcess, list[GatewayProcess]]]:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    nodes = [GatewayProcess(registry=ROOT / "models.json", log_path=tmp_path / f"node{i}.log", env={
        "GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(tmp_path / f"cache{i}"),
        "GATEWAY_REGISTRY_WATCH_INTERVAL": "0"}) for i in range(2)]
    front = GatewayProcess(registry=ROOT / "models.json", log_path=tmp_path / "front.log", env={
        "GATEWAY_NODES": ",".join(n.url for n in nodes), "GATEWAY_NODE_POLL_INTERVAL": "0.2",
        "GATEWAY_REGISTRY_WATCH_INTERVAL": "0", "GATEWAY_KEYS_FILE": str(keys)})
    try:
        for n in nodes:
            n.start().wait_ready(90)
        front.start().wait_ready(30)
        yield front, nodes
    finally:
        front.stop()
        for n in nodes:
            n.stop()


def test_a_front_keeps_the_conversation_when_the_node_that_answered_dies(
        fleet: tuple[GatewayProcess, list[GatewayProcess]]) -> None:
    front, nodes = fleet
    first = ask(front, A, input="Tell me about the sea")
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["store"] is True and answer["previous_response_id"] is None
    rid, node = answer["id"], first.headers["x-gateway-node"]
    assert read(front, A, rid).json()["id"] == rid
    assert read(front, B, rid).status_code == 404  # another team's id is not there for it
    items = read(front, A, f"{rid}/input_items").json()["data"]
    assert items[0]["content"][0]["text"] == "Tell me about the sea"
    victim = next(n for n in nodes if n.url.removeprefix("http://") == node)
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(10)  # type: ignore[union-attr]
    follow = ask(front, A, input="And the mountains?", previous_response_id=rid)
    assert follow.status_code == 200, follow.text
    assert follow.headers["x-gateway-node"] != node
    assert follow.json()["previous_response_id"] == rid
    assert follow.json()["usage"]["input_tokens"] > answer["usage"]["input_tokens"]  # the history came along
    stolen = ask(front, B, input="And yours?", previous_response_id=rid)
    assert stolen.status_code == 400 and stolen.json()["error"]["code"] == "previous_response_not_found"


def test_a_single_gateway_continues_after_its_runtime_and_itself_restart(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    env = {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(tmp_path / "cache"),
           "GATEWAY_KEYS_FILE": str(keys), "GATEWAY_ADMIN_API_KEY": "the-admin-key",
           "GATEWAY_STATE_DIR": str(tmp_path / "state")}
    with GatewayProcess(registry=ROOT / "models.json", log_path=tmp_path / "gw.log", env=env) as gw:
        gw.wait_ready(90)
        first = ask(gw, A, input="Tell me about the sea")
        assert first.status_code == 200, first.text
        rid, used = first.json()["id"], first.json()["usage"]["input_tokens"]
        status = httpx.get(f"{gw.url}/admin/status", headers={"Authorization": "Bearer the-admin-key"}).json()
        os.kill(status["managed"]["pid"], signal.SIGKILL)  # the runtime that answered, and kept nothing
        follow = ask(gw, A, input="And the mountains?", previous_response_id=rid)
        assert follow.status_code == 200, follow.text
        assert follow.json()["usage"]["input_tokens"] > used
        gw.stop()
        gw.start().wait_ready(90)  # the gateway itself restarts: its state is on disk
        assert read(gw, A, rid).json()["id"] == rid
        again = ask(gw, A, input="And the sky?", previous_response_id=follow.json()["id"])
        assert again.status_code == 200 and again.json()["usage"]["input_tokens"] > \
            follow.json()["usage"]["input_tokens"]
