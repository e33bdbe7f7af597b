"""Each team sees its own (issue 24): a team key lists the models it may use, gets the routes it may take from
/v1/route, and sees only its own requests in /v1/console (the admin key sees all); failed routes show up with
their reason; a rejected registry reload is said in /readyz and the console; tools with `auto` and no model
that can use them is a 400 saying what to declare."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for, write_registry

REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}, {"name": "chat-b", "task": "chat", "min_ram_gb": 1}]
KEYS = {"keys": [{"name": "team-a", "key": "team-a-secret", "models": ["chat-a"]},
                 {"name": "team-b", "key": "team-b-secret"}]}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def teams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    tmp = tmp_path_factory.mktemp("teams")
    keys = tmp / "keys.json"
    keys.write_text(json.dumps(KEYS))
    registry = write_registry(tmp / "models.json", REGISTRY)
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, log_path=tmp / "gw.log",
            env={**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys), "GATEWAY_ADMIN_API_KEY": "the-admin-key"}) as gw:
        gw.wait_ready()
        yield gw, registry


def get(gw: GatewayProcess, path: str, key: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{gw.url}{path}", headers={"Authorization": f"Bearer {key}"}, params=params, timeout=30)


def chat(gw: GatewayProcess, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"messages": HI, "max_tokens": 4, **body})


def test_a_team_lists_and_routes_only_its_models(teams: tuple[GatewayProcess, Path]) -> None:
    gw, _ = teams
    assert [m["id"] for m in get(gw, "/v1/models", "team-a-secret").json()["data"]] == ["chat-a"]
    assert [m["id"] for m in get(gw, "/v1/models", "team-b-secret").json()["data"]] == ["chat-a", "chat-b"]
    assert get(gw, "/v1/models/chat-b", "team-a-secret").status_code == 404
    assert get(gw, "/v1/route", "team-a-secret").json()["model"] == "chat-a"
    refused = get(gw, "/v1/route", "team-a-secret", model="chat-b")  # what the same key's request would get: 403
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    assert chat(gw, "team-a-secret", model="chat-b").status_code == 403


def test_the_console_shows_a_team_its_own_requests_and_the_admin_all(teams: tuple[GatewayProcess, Path]) -> None:
    gw, _ = teams
    assert chat(gw, "team-a-secret").status_code == 200
    assert chat(gw, "team-b-secret", model="chat-b").status_code == 200
    assert chat(gw, "team-b-secret", model="nonexistent").status_code == 404  # a failed route
    mine = get(gw, "/v1/console", "team-a-secret").json()
    assert {d["key"] for d in mine["decisions"]} == {"team-a"} and mine["you"]["sees"] == "the requests of key 'team-a'"
    assert [m["id"] for m in mine["models"]] == ["chat-a"]
    everything = get(gw, "/v1/console", "the-admin-key").json()
    assert {"team-a", "team-b"} <= {d["key"] for d in everything["decisions"]}
    failed = next(d for d in everything["decisions"] if d["status"] == 404)
    assert failed["model"] is None and failed["reason"] == "refused" and "nonexistent" in failed["why"]


def test_tools_with_auto_and_no_capable_model_is_a_400_saying_what_to_declare(teams: tuple[GatewayProcess, Path]
                                                                              ) -> None:
    gw, _ = teams
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = chat(gw, "team-b-secret", model="auto", tools=tools)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_value" and '"capabilities": ["chat", "tools"]' in error["message"]


def test_a_rejected_registry_reload_is_said_in_readyz_and_the_console(teams: tuple[GatewayProcess, Path]) -> None:
    gw, registry = teams
    good = registry.read_text()
    try:
        registry.write_text("[{broken")
        assert wait_for(lambda: get(gw, "/readyz", "the-admin-key").json()["registry"]["rejected"], timeout=10)
        assert "not valid JSON" in get(gw, "/v1/console", "the-admin-key").json()["registry"]["rejected"]
    finally:
        registry.write_text(good)
    assert wait_for(lambda: get(gw, "/readyz", "the-admin-key").json()["registry"]["rejected"] is None, timeout=10)
