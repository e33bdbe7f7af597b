"""Registry hot reload: a good file applies to new requests, a bad one is rejected and the last good one
stays, in-flight streams are unaffected; by file change, SIGHUP or the admin call."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FAKE_ENV, FAKE_REGISTRY
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for, write_registry

ADMIN = {"Authorization": "Bearer admin-key"}


def chosen(gw: GatewayProcess, task: str = "chat") -> str:
    return str(httpx.get(f"{gw.base_url}/route", params={"task": task}).json()["model"])


def reloads(gw: GatewayProcess, result: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith(f'gateway_registry_reloads_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def swapped() -> list[dict[str, Any]]:
    """The fake registry with chat-b ahead of chat-a."""
    entries = [dict(e) for e in FAKE_REGISTRY]
    entries[1], entries[2] = entries[2], entries[1]
    return entries


def test_file_change_applies_and_bad_file_keeps_last_good(upstream: UpstreamProcess, tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "models.json", FAKE_REGISTRY)
    with GatewayProcess(upstream=upstream.url, registry=registry, env=FAKE_ENV, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        assert chosen(gw) == "chat-a"
        write_registry(registry, swapped())
        assert wait_for(lambda: chosen(gw) == "chat-b"), "the new registry was not applied"
        assert reloads(gw, "ok") >= 2

        registry.write_text('[{"name": "broken", "task": "chat", "min_ram_gb": -3}]')
        assert wait_for(lambda: reloads(gw, "error") >= 1), "the bad registry was not noticed"
        assert chosen(gw) == "chat-b"  # the last good registry stays in force
        r = httpx.post(f"{gw.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200 and r.headers["x-gateway-model"] == "chat-b"
    assert "min_ram_gb must be a number ≥ 0" in (tmp_path / "g.log").read_text()


def test_in_flight_stream_survives_a_reload(upstream: UpstreamProcess, tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "models.json", FAKE_REGISTRY)
    upstream.configure(chunks=10, chunk_delay_ms=150)
    with GatewayProcess(upstream=upstream.url, registry=registry, env=FAKE_ENV, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        result: dict[str, str] = {}

        def stream() -> None:
            body = {"messages": [{"role": "user", "content": "long"}], "stream": True, "max_tokens": 8}
            r = httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=20)
            result["text"], result["model"] = r.text, r.headers["x-gateway-model"]

        thread = threading.Thread(target=stream)
        thread.start()
        assert wait_for(lambda: upstream.stats()["streams_started"] == 1)  # chat-a's stream is under way
        write_registry(registry, [e for e in FAKE_REGISTRY if e["name"] != "chat-a"])  # its model disappears
        assert wait_for(lambda: chosen(gw) == "chat-b")
        thread.join(20)
        assert result["model"] == "chat-a"
        assert result["text"].rstrip().endswith("data: [DONE]") and '"error"' not in result["text"]


def test_sighup_and_admin_reload(upstream: UpstreamProcess, tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "models.json", FAKE_REGISTRY)
    env = {**FAKE_ENV, "GATEWAY_REGISTRY_WATCH_INTERVAL": "0", "GATEWAY_ADMIN_API_KEY": "admin-key"}
    with GatewayProcess(upstream=upstream.url, registry=registry, env=env, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        write_registry(registry, swapped())
        assert chosen(gw) == "chat-a" and reloads(gw, "ok") == 1  # watching is off: only a signal reloads
        os.kill(gw.pid, signal.SIGHUP)
        assert wait_for(lambda: chosen(gw) == "chat-b"), "SIGHUP did not reload"

        write_registry(registry, FAKE_REGISTRY)
        assert httpx.post(f"{gw.url}/admin/reload").status_code == 401
        r = httpx.post(f"{gw.url}/admin/reload", headers=ADMIN)
        assert r.status_code == 200 and r.json()["status"] == "reloaded"
        assert chosen(gw) == "chat-a"

        registry.write_text(json.dumps([{"name": "x"}]))
        r = httpx.post(f"{gw.url}/admin/reload", headers=ADMIN)
        assert r.status_code == 422 and "task is required" in r.json()["error"]["message"]
        assert chosen(gw) == "chat-a"
