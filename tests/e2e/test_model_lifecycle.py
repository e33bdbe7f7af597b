"""Models on a host, on the real runtime: preload before ready, measured RAM (recorded, persisted, known after a
restart), pinned models surviving the idle unload, a failed preload reported but not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT, GatewayProcess, require_module, wait_for, write_registry

require_module("foundry_local_sdk")
ADMIN = {"Authorization": "Bearer admin"}


def registry(tmp_path: Path, *, pin_chat: bool) -> Path:
    entries = [dict(e) for e in json.loads((ROOT / "models.json").read_text()) if e["name"].startswith("tiny-")]
    for entry in entries:
        entry["path"] = str(ROOT / entry["path"])
        if entry["name"] == "tiny-chat":
            entry["pinned"] = pin_chat
    return write_registry(tmp_path / "models.json", entries)


def managed(tmp_path: Path, cache: Path, name: str, **env: str) -> GatewayProcess:
    settings = {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(cache),
                "GATEWAY_ADMIN_API_KEY": "admin", "GATEWAY_REGISTRY_WATCH_INTERVAL": "0", **env}
    return GatewayProcess(registry=registry(tmp_path, pin_chat=True), env=settings, log_path=tmp_path / f"{name}.log")


def rows(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in httpx.get(f"{gw.base_url}/models", timeout=10).json()["data"]}


def runtime_loaded(gw: GatewayProcess) -> list[str]:
    url = httpx.get(f"{gw.url}/admin/status", headers=ADMIN, timeout=5).json()["upstream"]["url"]
    return sorted(httpx.get(f"{url}/catalogs/local/models/loaded", timeout=5).json())


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("foundry-cache")


@pytest.fixture(scope="module")
def preloaded(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("preload")
    with managed(tmp, cache, "preload", GATEWAY_PRELOAD="all-fitting", GATEWAY_IDLE_UNLOAD_AFTER="2") as gw:
        gw.wait_ready(90)
        yield gw


def test_preload_loads_before_the_first_request(preloaded: GatewayProcess) -> None:
    ready = httpx.get(f"{preloaded.url}/readyz", timeout=5).json()
    assert ready["preload"] == {"running": False, "models": {"tiny-chat": "loaded", "tiny-embed": "loaded"}}
    assert "tiny-chat-generic-cpu:1" in runtime_loaded(preloaded)  # no request was sent


def test_measured_ram_is_recorded_and_persisted(preloaded: GatewayProcess, cache: Path) -> None:
    chat = rows(preloaded)["tiny-chat"]
    assert chat["measured_ram_gb"] is not None and chat["measured_ram_gb"] > 0
    assert chat["ram_gb"] == max(chat["min_ram_gb"], chat["measured_ram_gb"])
    saved = json.loads((cache / "gateway-footprints.json").read_text())["models"]
    assert saved["tiny-chat-generic-cpu:1"]["bytes"] > 0
    metrics = httpx.get(f"{preloaded.url}/metrics", timeout=5).text
    assert 'gateway_model_measured_ram_bytes{model="tiny-chat"}' in metrics


def test_pinned_model_survives_the_idle_unload(preloaded: GatewayProcess) -> None:
    # both idle since the preload: the unpinned one goes after 2 s, the pinned one stays
    assert wait_for(lambda: "tiny-embed-generic-cpu:1" not in runtime_loaded(preloaded), timeout=20)
    assert "tiny-chat-generic-cpu:1" in runtime_loaded(preloaded)
    assert rows(preloaded)["tiny-chat"]["loaded"] is True


def cli(*args: str, cache: Path, registry_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_FOUNDRY_CACHE_DIR": str(cache), "GATEWAY_ENV_FILE": "/nonexistent", "CI": "true",
           "GATEWAY_REGISTRY_PATH": str(registry_path or ROOT / "models.json"), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cache_ls_lists_registered_models_with_their_state(preloaded: GatewayProcess, cache: Path) -> None:
    done = cli("models", "cache", "ls", "--json", "--gateway", preloaded.url, cache=cache)
    assert done.returncode == 0, done.stderr
    rows = {row["id"]: row for row in json.loads(done.stdout)["models"]}
    chat = rows["tiny-chat-generic-cpu:1"]
    assert chat["kind"] == "local folder" and chat["registered_as"] == "tiny-chat" and chat["version"] == 1
    assert chat["loaded"] is True and chat["size_bytes"] > 3_000_000
    assert chat["path"] == str(ROOT / "models" / "tiny-chat")


def test_cache_rm_refuses_a_loaded_model(preloaded: GatewayProcess, cache: Path) -> None:
    done = cli("models", "cache", "rm", "tiny-chat", "--gateway", preloaded.url, cache=cache)
    assert done.returncode == 1 and "is loaded" in done.stderr
    listed = cli("models", "cache", "ls", "--json", "--gateway", preloaded.url, cache=cache)
    assert "tiny-chat-generic-cpu:1" in listed.stdout  # still there


def test_cache_rm_of_a_download_and_a_registration(tmp_path: Path) -> None:
    """No runtime running: a catalog download's folder is deleted; a local registration is forgotten, its
    folder kept."""
    cache = tmp_path / "cache"
    download = cache / "Microsoft" / "phi-x-generic-cpu-1"  # Foundry Local's <id>-<version>/<variant>/ layout
    for variant in ("cpu-int4-rtn-block-32", "cpu-fp32"):
        (download / variant).mkdir(parents=True)
        (download / variant / "genai_config.json").write_text("{}")
        (download / variant / "model.onnx").write_bytes(b"\0" * 4096)
    with managed(tmp_path, cache, "once") as gw:  # registers tiny-chat and tiny-embed in this cache
        gw.wait_ready(90)
    rows = {r["id"]: r for r in json.loads(cli("models", "cache", "ls", "--json", cache=cache).stdout)["models"]}
    phi = rows["phi-x-generic-cpu:1"]  # both variants: one download
    assert phi["kind"] == "download" and phi["version"] == 1 and phi["size_bytes"] >= 8192
    assert phi["path"] == str(download.resolve())
    assert rows["tiny-embed-generic-cpu:1"]["loaded"] is False  # no gateway running: nothing loaded through one
    assert cli("models", "cache", "rm", "phi-x-generic-cpu:1", cache=cache).returncode == 0
    assert not download.exists()
    removed = cli("models", "cache", "rm", "tiny-embed", cache=cache)
    assert removed.returncode == 0 and "unregistered tiny-embed-generic-cpu:1" in removed.stdout
    rows = {r["id"] for r in json.loads(cli("models", "cache", "ls", "--json", cache=cache).stdout)["models"]}
    assert rows == {"tiny-chat-generic-cpu:1"} and (ROOT / "models" / "tiny-embed").is_dir()
    assert cli("models", "cache", "rm", "nothing-like-it", cache=cache).returncode == 1
    (cache / "genai_config.json").write_text("{}")  # a model dropped flat into the cache itself
    flat = cli("models", "cache", "rm", cache.name, "--force", cache=cache)
    assert flat.returncode == 1 and "not a model folder inside the cache" in flat.stderr and cache.is_dir()


def test_restart_knows_the_measured_sizes(preloaded: GatewayProcess, cache: Path, tmp_path: Path) -> None:
    measured = rows(preloaded)["tiny-chat"]["measured_ram_gb"]
    preloaded.stop()
    with managed(tmp_path, cache, "again") as gw:
        gw.wait_ready(90)
        row = rows(gw)["tiny-chat"]
        assert row["loaded"] is False and row["measured_ram_gb"] == measured  # known before any load


def test_failed_preload_is_reported_not_fatal(cache: Path, tmp_path: Path) -> None:
    with managed(tmp_path, cache, "failing", GATEWAY_PRELOAD="nope,phi-4-mini,tiny-chat") as gw:
        gw.wait_ready(90)
        models = httpx.get(f"{gw.url}/readyz", timeout=5).json()["preload"]["models"]
        assert models["nope"] == "not in the registry"
        assert models["tiny-chat"] == "loaded"
