"""What the gateway shows and to whom, and what it refuses to start with: start-up warnings beyond loopback,
URLs, errors and paths only for the admin key, worker counts that would break limits or model management."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.cli.serve import workers_problem
from app.core.settings import load_settings
from app.gateway import exposure_warnings
from tests.conftest import FAKE_ENV, FAKE_REGISTRY
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, write_registry


def test_listening_beyond_loopback_without_keys_warns_loudly() -> None:
    assert exposure_warnings(load_settings(host="127.0.0.1")) == []
    open_to_all = exposure_warnings(load_settings(host="0.0.0.0"))
    assert any("NO API KEYS" in w for w in open_to_all) and any("/metrics is open" in w for w in open_to_all)
    keyed = exposure_warnings(load_settings(host="0.0.0.0", api_keys=["k"], metrics_api_key="m"))
    assert keyed == []


def test_paths_urls_and_errors_only_for_the_admin_key(upstream: UpstreamProcess, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "local-chat"
    folder.mkdir(parents=True)
    registry = write_registry(tmp_path / "models.json", [*FAKE_REGISTRY, {
        "name": "local-chat", "task": "chat", "min_ram_gb": 1, "path": "models/local-chat"}])
    env = {**FAKE_ENV, "GATEWAY_API_KEYS": "app-key", "GATEWAY_ADMIN_API_KEY": "admin-key"}
    with GatewayProcess(upstream=upstream.url, registry=registry, env=env, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        app = {"Authorization": "Bearer app-key"}
        admin = {"Authorization": "Bearer admin-key"}
        rows = {r["id"]: r for r in httpx.get(f"{gw.base_url}/models", headers=app).json()["data"]}
        assert rows["local-chat"]["local_path"] is None  # an app sees no absolute paths of this host
        rows = {r["id"]: r for r in httpx.get(f"{gw.base_url}/models", headers=admin).json()["data"]}
        assert rows["local-chat"]["local_path"] == str(folder)
        single = httpx.get(f"{gw.base_url}/models/local-chat", headers=app).json()
        assert single["local_path"] is None
        public = httpx.get(f"{gw.url}/readyz").json()
        assert public["status"] == "ready" and "url" not in public["upstream"] and "error" not in public["upstream"]
        private = httpx.get(f"{gw.url}/readyz", headers=admin).json()
        assert private["upstream"]["url"] == upstream.url


def test_worker_counts_that_would_be_wrong_are_refused() -> None:
    managed = load_settings(workers=2)
    assert "external upstream" in (workers_problem(managed, []) or "")
    foundry = load_settings(workers=2, upstream_mode="external", upstream_url="http://127.0.0.1:9")
    assert "unload a model another worker is streaming on" in (workers_problem(foundry, []) or "")
    plain = {"upstream_mode": "external", "upstream_url": "http://127.0.0.1:9", "upstream_kind": "openai"}
    assert workers_problem(load_settings(workers=2, **plain), []) is None  # each worker enforces 1 of 2
    assert "GATEWAY_MODEL_CONCURRENCY (2) cannot be split over 4" in (
        workers_problem(load_settings(workers=4, **plain), []) or "")
    assert "max_concurrency of 1" in (workers_problem(load_settings(workers=2, **plain), [1]) or "")


@pytest.mark.parametrize("kind", ["foundry", "openai"])
def test_serve_refuses_with_the_reason(kind: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--upstream", "http://127.0.0.1:9", "--workers", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_UPSTREAM_KIND": kind,
             "COLUMNS": "200"},
    )
    assert run.returncode == 2 and "--workers 4 refused" in run.stderr
    assert ("streaming on" if kind == "foundry" else "cannot be split over 4 workers") in run.stderr
