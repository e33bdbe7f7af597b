"""Keys for teams: the keys file, allow-lists, and quotas held by two gateway replicas together through a real
redis-server the tests start (Debian's package, installed by `make redis`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.access.keys import digest
from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, wait_for, write_registry

# --- the keys file ---------------------------------------------------------------------------------------


def _clear_of_the_minute_boundary(margin: float = 8.0) -> None:
    """The quota windows are UTC minutes: a short test that would straddle a boundary starts just after it
    instead (a wait on the wall clock, not a synchronisation)."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}, {"name": "chat-b", "task": "chat", "min_ram_gb": 1}]


KEYS = {"keys": [
    {"name": "team-a", "key": "team-a-secret", "models": ["chat-a"], "requests_per_minute": 5},
    {"name": "team-b", "key": "team-b-secret", "tokens_per_minute": 30},
    {"name": "ops", "key": "ops-unlimited-key"},
]}


HI = [{"role": "user", "content": "hi"}]


def ask(gw: GatewayProcess, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"messages": HI, "max_tokens": 8, **body}, timeout=30)


@pytest.fixture()
def replicas(redis_url: str, tmp_path: Path) -> Iterator[tuple[list[GatewayProcess], Path, UpstreamProcess]]:
    import redis

    redis.Redis.from_url(redis_url).flushall()
    _clear_of_the_minute_boundary()
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up:
        up.configure(chunks=10)
        base = {**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys), "GATEWAY_REDIS_URL": redis_url,
                "GATEWAY_REGISTRY_WATCH_INTERVAL": "0.2"}
        gws = [GatewayProcess(upstream=up.url, registry=registry, env=base, log_path=tmp_path / "a.log"),
               GatewayProcess(upstream=up.url, registry=registry, env={**base, "GATEWAY_QUOTA_FAIL_OPEN": "false"},
                              log_path=tmp_path / "b.log")]
        try:
            for gw in gws:
                gw.start().wait_ready()
            yield gws, keys, up
        finally:
            for gw in gws:
                gw.stop()


def test_unknown_key_401_and_allow_list_403(replicas: tuple[list[GatewayProcess], Path, UpstreamProcess]) -> None:
    (a, _), _, _ = replicas
    assert ask(a, "nope-nope-nope").status_code == 401
    denied = ask(a, "team-a-secret", model="chat-b")
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == "Key 'team-a' may not use model 'chat-b'. It may use: chat-a."
    auto = ask(a, "team-a-secret")
    assert auto.status_code == 200 and auto.headers["x-gateway-model"] == "chat-a"  # auto: only what it may use
    assert ask(a, "ops-unlimited-key", model="chat-b").status_code == 200


def test_two_replicas_hold_a_key_to_its_quota_together(replicas: tuple[list[GatewayProcess], Path,
                                                                             UpstreamProcess]) -> None:
    (a, b), _, _ = replicas
    remaining = [ask(gw, "team-a-secret").headers["x-ratelimit-remaining-requests"] for gw in (a, b, a, b, a)]
    assert remaining == ["4", "3", "2", "1", "0"]
    refused = ask(b, "team-a-secret")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "team-a" in error["message"] and "requests per minute" in error["message"]
    headers = refused.headers
    assert headers["x-ratelimit-limit-requests"] == "5" and headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60 and headers["x-ratelimit-reset-requests"].endswith("s")
    metrics = httpx.get(f"{b.url}/metrics").text
    assert 'gateway_key_rejections_total{key="team-a",reason="requests_per_minute"} 1.0' in metrics


def test_token_quota_counts_streamed_usage(replicas: tuple[list[GatewayProcess], Path, UpstreamProcess]) -> None:
    (a, b), _, _ = replicas
    answered = 0
    for gw in (a, b, a, b, a):
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", timeout=30,
                          headers={"Authorization": "Bearer team-b-secret"},
                          json={"messages": HI, "max_tokens": 8, "stream": True}) as r:
            r.read()
            if r.status_code == 429:
                assert r.headers["x-ratelimit-remaining-tokens"] == "8"
                assert "tokens per minute" in r.json()["error"]["message"]
                break
            answered += 1
    # each reserves 9 (1 prompt + max_tokens 8) and spends 11 (1 in, 10 out, the streams' usage): after two, 22
    # spent and the third's 9 would go over 30 — refused before it could overspend
    assert answered == 2
    metrics = httpx.get(f"{a.url}/metrics").text
    assert 'gateway_key_tokens_total{key="team-b",type="output"}' in metrics


def test_keys_file_hot_reload_keeps_the_last_good(replicas: tuple[list[GatewayProcess], Path,
                                                                   UpstreamProcess]) -> None:
    (a, _), keys, _ = replicas
    keys.write_text(json.dumps({"keys": [*KEYS["keys"], {"name": "team-d", "key": "team-d-secret"}]}))
    assert wait_for(lambda: ask(a, "team-d-secret").status_code == 200)
    keys.write_text("{broken")
    assert wait_for(lambda: 'gateway_keys_reloads_total{result="error"}' in httpx.get(f"{a.url}/metrics").text)
    assert ask(a, "team-d-secret").status_code == 200  # the last good keys stay


def test_redis_killed_mid_run_fails_open_or_closed_as_configured(
        replicas: tuple[list[GatewayProcess], Path, UpstreamProcess],
        redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    """The last test that needs Redis: it kills the server."""
    (a, b), _, _ = replicas
    assert ask(a, "team-a-secret").status_code == 200
    redis_server[1].kill()  # SIGKILL, mid-run
    redis_server[1].wait(10)
    assert ask(a, "team-a-secret").status_code == 200  # fail open (the default), loudly
    assert "gateway_quota_store_errors_total 0.0" not in httpx.get(f"{a.url}/metrics").text
    assert "QUOTA STORE UNAVAILABLE" in (a.log_path.read_text() if a.log_path else "")
    closed = ask(b, "team-a-secret")
    assert closed.status_code == 503 and closed.json()["error"]["code"] == "quota_store_unavailable"


def test_keys_cli_add_ls_rm(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_KEYS_FILE": str(path)}
        return subprocess.run([sys.executable, "-m", "app.cli", "keys", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    added = cli("add", "team-x", "--models", "tiny-chat", "--requests-per-minute", "60")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("fgw-") and key not in path.read_text() and digest(key) in path.read_text()
    assert cli("add", "team-x").returncode == 1  # names are unique
    listed = json.loads(cli("ls", "--json").stdout)["keys"]
    assert listed == [{"name": "team-x", "models": ["tiny-chat"], "tasks": None, "requests_per_minute": 60,
                       "tokens_per_minute": 0, "tokens_per_day": 0, "max_concurrency": 0, "max_cost_per_day": None,
                       "max_tokens_per_month": None, "priority": None, "storage_bytes": None, "expires_at": None,
                       "previous_secrets": []}]
    assert cli("rm", "team-x").returncode == 0 and json.loads(cli("ls", "--json").stdout)["keys"] == []


def test_an_empty_keys_file_lets_nobody_in_and_the_admin_key_works(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}')
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, log_path=tmp_path / "gw.log",
            env={**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys), "GATEWAY_ADMIN_API_KEY": "the-admin-key"}) as gw:
        gw.wait_ready()
        assert ask(gw, "anything-at-all").status_code == 401
        assert httpx.post(f"{gw.base_url}/chat/completions", json={"messages": HI, "max_tokens": 4},
                          timeout=30).status_code == 401
        assert ask(gw, "the-admin-key").status_code == 200
        assert httpx.get(f"{gw.base_url}/console", headers={"Authorization": "Bearer the-admin-key"}).status_code == 200


SECRET_REGISTRY = [{"name": "public", "task": "chat", "min_ram_gb": 1},
                   {"name": "secret", "task": "chat", "min_ram_gb": 1, "aliases": ["secret-alias"]}]


def test_whitespace_around_a_model_name_does_not_bypass_the_allow_list(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "team", "key": "team-secret-key", "models": ["public"]}]}))
    registry = write_registry(tmp_path / "models.json", SECRET_REGISTRY)
    with UpstreamProcess(models=["public", "secret"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, log_path=tmp_path / "gw.log",
            env={**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys)}) as gw:
        gw.wait_ready()
        headers = {"Authorization": "Bearer team-secret-key"}
        for name in (" secret", "secret ", "\tsecret-alias\n", "SECRET", " Secret-Alias "):
            chat = ask(gw, "team-secret-key", model=name)
            assert chat.status_code == 403, (name, chat.text)
            assert chat.json()["error"]["message"].startswith("Key 'team' may not use model 'secret'")
            responses = httpx.post(f"{gw.base_url}/responses", headers=headers, timeout=30,
                                   json={"model": name, "input": "hi", "max_output_tokens": 8})
            assert responses.status_code == 403, (name, responses.text)
        assert up.stats()["by_model"].get("secret", 0) == 0
        pinned = ask(gw, "team-secret-key", model="  public ")
        assert pinned.status_code == 200 and pinned.headers["x-gateway-model"] == "public"


def _access_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{") and '"request_id"' in line:
            lines.append(json.loads(line))
    return lines


def test_streams_the_client_cuts_are_charged_what_was_generated(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "team", "key": "team-secret-key", "tokens_per_minute": 50}]}))
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    log = tmp_path / "gw.log"
    _clear_of_the_minute_boundary(margin=20)
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, log_path=log,
            env={**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys), "GATEWAY_ACCESS_LOG": "true"}) as gw:
        gw.wait_ready()
        up.configure(pieces=[f"word{i:02d} " for i in range(40)], chunk_delay_ms=30)
        for _ in range(3):
            with httpx.stream("POST", f"{gw.base_url}/chat/completions", timeout=30,
                              headers={"Authorization": "Bearer team-secret-key"},
                              json={"messages": HI, "max_tokens": 16, "stream": True}) as r:
                assert r.status_code == 200, r.read()
                seen = ""
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        seen += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                    if len(seen) >= 30:
                        break  # the client leaves mid-stream
        assert wait_for(lambda: len(_access_lines(log)) >= 3, timeout=15)
        cut = _access_lines(log)
        assert all(line["completion_tokens"] and line["completion_tokens"] >= 7 for line in cut), cut
        up.configure(pieces=None, chunk_delay_ms=0)
        after = ask(gw, "team-secret-key")
        assert after.status_code == 429 or int(after.headers["x-ratelimit-remaining-tokens"]) <= 50 - 3 * 7


def test_workers_hold_a_key_to_its_quota_together(tmp_path: Path) -> None:
    """Four workers, no Redis: the quota counters are in the state store's SQLite file, which every worker of
    the host shares — five requests a minute is five, not five per worker (issue 22 found 19 of 40)."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "team", "key": "team-secret-key", "requests_per_minute": 5}]}))
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    _clear_of_the_minute_boundary(margin=20)
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, log_path=tmp_path / "gw.log",
            env={**FAKE_ENV, "GATEWAY_KEYS_FILE": str(keys), "GATEWAY_WORKERS": "4",
                 "GATEWAY_MODEL_CONCURRENCY": "8", "GATEWAY_STATE_DIR": str(tmp_path / "state")}) as gw:
        gw.wait_ready()
        statuses = [ask(gw, "team-secret-key").status_code for _ in range(20)]
        assert statuses.count(200) == 5 and statuses.count(429) == 15, statuses
