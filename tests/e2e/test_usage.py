"""Who used what (issue 34), end to end: gateways over the fake upstream, the official openai SDK making the
requests, usage read back from ``GET /v1/usage`` grouped each way — with the state in SQLite and in a real
redis-server; a team key sees its own; CSV; budgets refuse with 429 and their headers; keys that expire and rotate;
a SIGKILL loses at most the last second; a front over two nodes reports both; ``foundry-gateway usage``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, require_module, wait_for, write_registry

REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1, "cost_per_1k_input_tokens": 1.0,
             "cost_per_1k_output_tokens": 2.0},
            {"name": "chat-b", "task": ["chat", "code"], "min_ram_gb": 1}]
KEYS = [{"name": "alpha", "key": "alpha-secret-key"}, {"name": "beta", "key": "beta-secret-key"}]
ADMIN = {"Authorization": "Bearer admin-key"}
HI = [{"role": "user", "content": "hi"}]


def gateway_env(tmp_path: Path, keys: list[dict[str, Any]], store: str, request: pytest.FixtureRequest,
                **extra: str) -> dict[str, str]:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": keys}))
    env = {**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys_file), "GATEWAY_ADMIN_API_KEY": "admin-key",
           "GATEWAY_CACHE": "off", **extra}
    if store == "redis":
        url = request.getfixturevalue("redis_url")
        import redis

        redis.Redis.from_url(url).flushall()
        env["GATEWAY_REDIS_URL"] = url
    return env


def usage(gw: GatewayProcess, headers: dict[str, str] = ADMIN, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{gw.base_url}/usage", params=params, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def totals(page: dict[str, Any], *by: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for bucket in page["data"]:
        for row in bucket["results"]:
            into = out.setdefault(tuple(row[b] for b in by), {"requests": 0, "input": 0, "output": 0, "runtime": 0.0,
                                                              "cost": None})
            into["requests"] += row["num_model_requests"]
            into["input"] += row["input_tokens"]
            into["output"] += row["output_tokens"]
            into["runtime"] += row["runtime_seconds"]
            if row["cost"] is not None:
                into["cost"] = (into["cost"] or 0) + row["cost"]
    return out


@pytest.fixture(params=["sqlite", "redis"])
def metered(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayProcess]:
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    env = gateway_env(tmp_path, KEYS, request.param, request)
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, env=env, log_path=tmp_path / "gw.log") as gw:
        up.configure(chunks=4, chunk_delay_ms=5)
        gw.wait_ready()
        yield gw


def test_two_keys_two_models_read_back_exactly_grouped_each_way(metered: GatewayProcess) -> None:
    openai = require_module("openai")
    gw = metered
    spent: dict[tuple[str, str], list[int]] = {}
    asks = [("alpha", "chat-a", False), ("alpha", "chat-a", True), ("alpha", "chat-b", False),
            ("beta", "chat-a", False), ("beta", "chat-b", True)]
    for name, model, stream in asks:
        client = openai.OpenAI(base_url=gw.base_url, api_key=f"{name}-secret-key", max_retries=0)
        if stream:
            chunks = list(client.chat.completions.create(model=model, messages=HI, max_tokens=8, stream=True,
                                                         stream_options={"include_usage": True}))
            used = chunks[-1].usage
        else:
            used = client.chat.completions.create(model=model, messages=HI, max_tokens=8).usage
        row = spent.setdefault((name, model), [0, 0, 0])
        row[0] += 1
        row[1] += used.prompt_tokens
        row[2] += used.completion_tokens
    coder = openai.OpenAI(base_url=gw.base_url, api_key="beta-secret-key", max_retries=0)
    raw = coder.chat.completions.with_raw_response.create(model="auto", messages=HI, max_tokens=4,
                                                          extra_headers={"X-Task": "code"})
    assert raw.headers["x-gateway-model"] == "chat-b"  # the only code model
    used = raw.parse().usage
    row = spent["beta", "chat-b"]
    row[0], row[1], row[2] = row[0] + 1, row[1] + used.prompt_tokens, row[2] + used.completion_tokens

    def all_there() -> bool:
        return sum(r["requests"] for r in totals(usage(gw)).values()) == len(asks) + 1

    assert wait_for(all_there, timeout=10, interval=0.1)  # observed after the last byte: a moment later
    by_key_model = totals(usage(gw, group_by="key,model"), "key", "model")
    assert set(by_key_model) == set(spent)
    for (name, model), (requests, prompt, completion) in spent.items():
        got = by_key_model[(name, model)]
        assert (got["requests"], got["input"], got["output"]) == (requests, prompt, completion), (name, model)
        assert got["runtime"] > 0
    priced = by_key_model[("alpha", "chat-a")]
    assert priced["cost"] == pytest.approx((priced["input"] * 1.0 + priced["output"] * 2.0) / 1000, rel=1e-6)
    assert by_key_model[("alpha", "chat-b")]["cost"] is None  # no price in the registry
    by_model = totals(usage(gw, group_by="model", bucket_width="1h"), "model")
    assert by_model[("chat-a",)]["requests"] == 3 and by_model[("chat-b",)]["requests"] == 3
    by_task = totals(usage(gw, group_by="task", bucket_width="1m"), "task")
    assert by_task[("code",)]["requests"] == 1 and by_task[("chat",)]["requests"] == 5
    by_endpoint = totals(usage(gw, group_by=["endpoint", "key"]), "endpoint", "key")
    assert by_endpoint[("chat", "beta")]["requests"] == 3
    # a team key sees its own, and may not ask for another's
    mine = totals(usage(gw, {"Authorization": "Bearer alpha-secret-key"}, group_by="key"), "key")
    assert list(mine) == [("alpha",)] and mine[("alpha",)]["requests"] == 3
    refused = httpx.get(f"{gw.base_url}/usage", params={"key": "beta"}, headers={"Authorization": "Bearer "
                        "alpha-secret-key"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    csv = httpx.get(f"{gw.base_url}/usage", params={"group_by": "key,model"}, headers={**ADMIN, "Accept": "text/csv"})
    lines = csv.text.splitlines()
    assert csv.headers["content-type"].startswith("text/csv") and lines[0].startswith("start_time,end_time,key,model,")
    assert sum(1 for line in lines[1:] if ",alpha,chat-a," in line) == 1
    bad = httpx.get(f"{gw.base_url}/usage", params={"bucket_width": "1w"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket_width"


def test_the_cli_sums_usage_per_key_and_model(metered: GatewayProcess) -> None:
    gw = metered
    for name in ("alpha", "beta"):
        assert httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {name}-secret-key"},
                          json={"model": "chat-a", "messages": HI, "max_tokens": 4}, timeout=30).status_code == 200
    assert wait_for(lambda: len(totals(usage(gw, group_by="key"), "key")) == 2, timeout=10, interval=0.1)
    command = [sys.executable, "-m", "app.cli", "usage", "--gateway", gw.url, "--api-key", "admin-key", "--since", "1d"]
    out = subprocess.run([*command, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    rows = {(r["key"], r["model"]): r for r in json.loads(out.stdout)["rows"]}
    assert rows[("alpha", "chat-a")]["num_model_requests"] == 1 and rows[("beta", "chat-a")]["cost"] > 0
    plain = subprocess.run([*command, "--by", "key"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert plain.stdout.splitlines()[0].split("\t")[:3] == ["key", "requests", "input tokens"]
    as_csv = subprocess.run([*command, "--csv"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert as_csv.stdout.splitlines()[0].startswith("key,model,num_model_requests,")
    wrong = subprocess.run([*command, "--by", "colour"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr and "--by can group by" in wrong.stderr


def test_budgets_refuse_with_429_and_their_headers(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    openai = require_module("openai")
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    keys = [{"name": "capped", "key": "capped-secret-key", "max_tokens_per_month": 10},
            {"name": "thrifty", "key": "thrifty-secret-key", "max_cost_per_day": 0.001}]
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, env=gateway_env(tmp_path, keys, "sqlite", request),
            log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        for name in ("capped", "thrifty"):
            client = openai.OpenAI(base_url=gw.base_url, api_key=f"{name}-secret-key", max_retries=0)
            first = client.chat.completions.with_raw_response.create(model="chat-a", messages=HI, max_tokens=16)
            assert first.headers["x-ratelimit-limit-" + ("tokens-per-month" if name == "capped" else "cost-per-day")]

            def refused(name: str = name) -> httpx.Response | None:
                r = httpx.post(f"{gw.base_url}/chat/completions",
                               headers={"Authorization": f"Bearer {name}-secret-key"}, timeout=30,
                               json={"model": "chat-a", "messages": HI, "max_tokens": 16})
                return r if r.status_code == 429 else None

            assert wait_for(refused, timeout=10, interval=0.2)  # spent: within a second of the usage landing
            r = refused()
            assert r is not None and r.json()["error"]["code"] == "insufficient_quota"
            assert r.headers["x-should-retry"] == "false" and int(r.headers["retry-after"]) >= 1
            budget = "tokens-per-month" if name == "capped" else "cost-per-day"
            assert r.headers[f"x-ratelimit-remaining-{budget}"] in ("0", "0.0")
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="chat-a", messages=HI, max_tokens=4)


def test_keys_expire_and_rotate_with_an_overlap(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    keys = [{"name": "gone", "key": "gone-secret-key", "expires_at": "2020-01-01T00:00:00Z"},
            {"name": "team", "key": "team-secret-key"}]
    env = gateway_env(tmp_path, keys, "sqlite", request)
    keys_file = tmp_path / "keys.json"
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()

        def ask(secret: str) -> httpx.Response:
            return httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                              json={"model": "chat-a", "messages": HI, "max_tokens": 4}, timeout=30)

        expired = ask("gone-secret-key")
        assert expired.status_code == 401 and expired.json()["error"]["code"] == "expired_api_key"
        assert "expired at 2020-01-01T00:00:00Z" in expired.json()["error"]["message"]
        rotated = subprocess.run([sys.executable, "-m", "app.cli", "keys", "rotate", "team", "--file", str(keys_file),
                                  "--overlap", "1h", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                                 check=True)
        new = json.loads(rotated.stdout)["key"]
        assert wait_for(lambda: ask(new).status_code == 200, timeout=10, interval=0.1)  # the file reloaded
        assert ask("team-secret-key").status_code == 200  # the old secret, within its overlap
        assert wait_for(lambda: totals(usage(gw, group_by="key"), "key").get(("team",), {}).get("requests") == 2,
                        timeout=10, interval=0.1)  # both secrets: one key's usage


def test_a_sigkill_loses_at_most_the_last_second(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    env = gateway_env(tmp_path, KEYS, "sqlite", request, GATEWAY_STATE_DIR=str(tmp_path / "state"))
    headers = {"Authorization": "Bearer alpha-secret-key"}
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up:
        gw = GatewayProcess(upstream=up.url, registry=registry, env=env, log_path=tmp_path / "a.log")
        with gw:
            gw.wait_ready()
            answered: list[float] = []
            with httpx.Client(timeout=30) as client:
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline and len(answered) < 2000:  # bounded in time and count
                    r = client.post(f"{gw.base_url}/chat/completions", headers=headers,
                                    json={"model": "chat-a", "messages": HI, "max_tokens": 2})
                    assert r.status_code == 200
                    answered.append(time.monotonic())
            assert gw.proc is not None
            gw.proc.kill()
            killed = time.monotonic()
            gw.proc.wait(10)
        after = GatewayProcess(upstream=up.url, registry=registry, env=env, log_path=tmp_path / "b.log")
        with after:
            after.wait_ready()
            kept = totals(usage(after))[()]["requests"]
    older = sum(1 for at in answered if at < killed - 1.0)
    assert older <= kept <= len(answered), (older, kept, len(answered))
    assert older > 10  # the test measured something


def test_a_front_reports_both_nodes_usage(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    env = gateway_env(tmp_path, KEYS, "sqlite", request)
    node_env = {**FAKE_ENV, "GATEWAY_CACHE": "off"}
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up1, UpstreamProcess(models=["chat-a", "chat-b"]) as up2:
        nodes = [GatewayProcess(upstream=up.url, registry=registry, env=node_env, log_path=tmp_path / f"n{i}.log")
                 for i, up in enumerate((up1, up2))]
        front = None
        try:
            for node in nodes:
                node.start().wait_ready()
            front = GatewayProcess(registry=registry, env={
                **env, "GATEWAY_NODES": ",".join(n.url for n in nodes), "GATEWAY_NODE_POLL_INTERVAL": "0.2",
                "GATEWAY_HOST_RAM_GB": "0.5"}, log_path=tmp_path / "front.log").start()
            front.wait_ready()
            import asyncio

            async def burst() -> set[str]:
                async with httpx.AsyncClient(timeout=30) as client:
                    answers = await asyncio.gather(*(client.post(
                        f"{front.base_url}/chat/completions", headers={"Authorization": "Bearer alpha-secret-key"},
                        json={"model": "chat-a", "messages": HI, "max_tokens": 8}) for _ in range(12)))
                return {a.headers["x-gateway-node"] for a in answers if a.status_code == 200}

            seen: set[str] = set()
            for _ in range(5):  # until both nodes answered some (load spreads; bounded)
                seen |= asyncio.run(burst())
                if len(seen) == 2:
                    break
            assert len(seen) == 2

            def both() -> dict[tuple[Any, ...], dict[str, Any]] | None:
                found = totals(usage(front, group_by="node,key"), "node", "key")
                return found if {node for node, _ in found} == seen else None

            assert wait_for(both, timeout=10, interval=0.1)
            found = both()
            assert found is not None and all(key == "alpha" for _, key in found)
        finally:
            if front is not None:
                front.stop()
            for node in nodes:
                node.stop()
