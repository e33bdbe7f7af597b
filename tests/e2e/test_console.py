"""The operator console (/ui) and the offline /docs, in a real headless Chromium (Debian's `chromium`, driven by
Playwright): the page renders the models, updates after traffic, admin actions work with the admin key and are
refused without it; /docs renders with every request off the host blocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, require_module, require_program, write_registry

MODELS = ["alpha-generic-cpu:1", "beta-generic-cpu:1"]
REGISTRY = [{"name": "alpha", "task": "chat", "min_ram_gb": 2}, {"name": "beta", "task": "chat", "min_ram_gb": 2,
                                                                 "pinned": True}]
ENV = {"GATEWAY_UPSTREAM_KIND": "foundry", "GATEWAY_HOST_RAM_GB": "10", "GATEWAY_ADMIN_API_KEY": "admin-key",
       "GATEWAY_ACCESS_LOG": "false"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, UpstreamProcess]]:
    tmp = tmp_path_factory.mktemp("console")
    registry = write_registry(tmp / "models.json", REGISTRY)
    with UpstreamProcess(models=MODELS, foundry=True) as up, \
            GatewayProcess(upstream=up.url, registry=registry, env=ENV, log_path=tmp / "gw.log") as gw:
        gw.wait_ready()
        yield gw, up


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_program("chromium")
    playwright = require_module("playwright.sync_api").sync_playwright().start()
    launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
    try:
        yield launched
    finally:
        launched.close()
        playwright.stop()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    blocked: list[str] = []

    def local_only(route: Any) -> None:  # the network is "off": nothing but this host answers
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    opened = context.new_page()
    opened.blocked = blocked
    try:
        yield opened
    finally:
        context.close()


def chat(gw: GatewayProcess, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=30).status_code == 200


def test_console_renders_and_updates_after_traffic(gateway: tuple[GatewayProcess, UpstreamProcess], page: Any,
                                                   tmp_path: Path) -> None:
    gw, _ = gateway
    page.goto(f"{gw.url}/ui")
    page.wait_for_selector('#models tbody tr[data-model="alpha"]')
    assert page.inner_text('#models tbody tr[data-model="beta"]').count("pinned") == 1
    assert page.inner_text("#admin-state") == "read-only"
    chat(gw, "alpha")
    page.wait_for_function("document.querySelectorAll('#decisions tbody tr').length > 0")
    page.wait_for_function("""document.querySelector('#models tr[data-model="alpha"] td.loaded').innerText === 'yes'""")
    assert "alpha" in page.inner_text("#decisions") and "alpha" in page.inner_text("#ram-labels")
    assert page.inner_text("#rate") != "0.00"
    page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
    assert page.blocked == []


def test_admin_actions_need_the_admin_key(gateway: tuple[GatewayProcess, UpstreamProcess], page: Any) -> None:
    gw, up = gateway
    chat(gw, "alpha")
    page.goto(f"{gw.url}/ui")
    page.wait_for_selector('#models tbody tr[data-model="alpha"]')
    assert page.is_disabled('button.unload[data-model="alpha"]')  # read-only without a key
    page.fill("#key", "not-the-admin-key")  # the gateway, not the page, says whether a key is the admin's
    page.dispatch_event("#key", "change")
    page.wait_for_function("document.body.dataset.updated && document.getElementById('admin-state').innerText "
                           "=== 'read-only'")
    assert page.is_disabled('button.unload[data-model="alpha"]')
    refused = httpx.post(f"{gw.url}/admin/models/alpha/unload", headers={"Authorization": "Bearer not-the-admin-key"})
    assert refused.status_code == 401 and "alpha-generic-cpu:1" in up.stats()["loaded"]
    page.fill("#key", "admin-key")
    page.dispatch_event("#key", "change")
    page.wait_for_function("document.getElementById('admin-state').innerText === 'admin key'")
    page.click('button.unload[data-model="alpha"]')
    page.wait_for_function("document.getElementById('message').innerText === 'unload: unloaded'")
    assert "alpha-generic-cpu:1" not in up.stats()["loaded"]
    page.click('button.load[data-model="beta"]')
    page.wait_for_function("document.getElementById('message').innerText === 'load: loaded'")
    assert "beta-generic-cpu:1" in up.stats()["loaded"]
    page.click("#reload")
    page.wait_for_function("document.getElementById('message').innerText === 'reload: reloaded'")


def test_docs_render_offline(gateway: tuple[GatewayProcess, UpstreamProcess], page: Any) -> None:
    gw, _ = gateway
    page.goto(f"{gw.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    assert "/v1/chat/completions" in page.inner_text(".swagger-ui")
    assert page.blocked == [], page.blocked  # nothing fetched from a CDN


def test_status_command_shares_the_consoles_json(gateway: tuple[GatewayProcess, UpstreamProcess]) -> None:
    gw, _ = gateway
    chat(gw, "alpha")
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "app.cli", "status", "--gateway", gw.url], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "endpoint\tmodel\ttask\twhy" in shown.stdout and "alpha" in shown.stdout
    state = json.loads(subprocess.run([sys.executable, "-m", "app.cli", "status", "--gateway", gw.url, "--json"],
                                      cwd=ROOT, env=env, capture_output=True, text=True, timeout=60).stdout)
    assert state == {**state, "admin": True, "ready": True} and state["decisions"][0]["model"] == "alpha"
    assert "messages" not in json.dumps(state["decisions"])  # no prompt text, ever


def test_batches_show_with_their_progress(gateway: tuple[GatewayProcess, UpstreamProcess], page: Any) -> None:
    gw, _ = gateway
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    lines = b"\n".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": body}).encode() for i in range(3))
    uploaded = httpx.post(f"{gw.base_url}/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"},
                          timeout=30).json()
    batch = httpx.post(f"{gw.base_url}/batches", timeout=30, json={
        "input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()
    page.goto(f"{gw.url}/ui")
    row = f'#batches tbody tr[data-batch="{batch["id"]}"]'
    page.wait_for_selector(row)
    page.wait_for_function(f"document.querySelector('{row}').innerText.includes('completed')")
    text = page.inner_text(row)
    assert "3 / 3" in text and "/v1/chat/completions" in text
    assert float(page.eval_on_selector(f"{row} .bar .ok", "e => e.style.width").rstrip("%")) == 100


def test_with_keys_the_console_asks_for_one_and_its_error_clears(page: Any, tmp_path: Path) -> None:
    """Issue 32, item 7: the 401 stayed on the page after a valid key was entered; the key field said
    "(optional)" on a gateway that needs one; the RAM column said "(measured)" beside the registry's figure;
    Load was offered for a model the upstream does not have."""
    registry = write_registry(tmp_path / "models.json", [*REGISTRY, {"name": "ghost", "task": "chat",
                                                                    "min_ram_gb": 1}])
    with UpstreamProcess(models=MODELS, foundry=True) as up, GatewayProcess(
            upstream=up.url, registry=registry, log_path=tmp_path / "gw.log",
            env={**ENV, "GATEWAY_API_KEYS": "team-secret-key"}) as gw:
        gw.wait_ready()
        page.goto(f"{gw.url}/ui")
        page.wait_for_function("document.getElementById('message').textContent.includes('API key')")
        assert "optional" not in page.get_attribute("#key", "placeholder") and \
            "required" in page.get_attribute("#key", "placeholder")
        page.fill("#key", "admin-key")
        page.dispatch_event("#key", "change")
        page.wait_for_selector("tr[data-model='ghost']")
        page.wait_for_function("document.getElementById('message').textContent === ''")
        ghost = page.locator("tr[data-model='ghost'] button.load")
        assert ghost.is_disabled() and "pull ghost" in (ghost.get_attribute("title") or "")
        assert not page.locator("tr[data-model='alpha'] button.load").is_disabled()
        ram = page.locator("tr[data-model='alpha'] td.num").nth(2).inner_text()
        assert ram == "2 GiB (registry)", ram


def test_the_usage_view_charts_each_key_and_model(browser: Any, tmp_path: Path) -> None:
    """Issue 34: the console's Usage view — the last 24 h per key and per model (tokens, runtime seconds, cost) and
    the totals; a team key's console shows its own usage only. ``FGW_SCREENSHOTS=DIR`` keeps the picture (the
    README's docs/usage.png is made so)."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "search-team", "key": "search-secret-key"},
                                         {"name": "docs-bot", "key": "docs-secret-key"}]}))
    registry = write_registry(tmp_path / "models.json", [
        {**REGISTRY[0], "cost_per_1k_input_tokens": 0.2, "cost_per_1k_output_tokens": 0.6}, REGISTRY[1]])
    env = {**ENV, "GATEWAY_KEYS_FILE": str(keys), "GATEWAY_CACHE": "off"}
    with UpstreamProcess(models=MODELS, foundry=True) as up, \
            GatewayProcess(upstream=up.url, registry=registry, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        up.configure(chunks=24)
        for secret, model, count in (("search", "alpha", 5), ("search", "beta", 2), ("docs", "alpha", 3)):
            for _ in range(count):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}
                assert httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=30,
                                  headers={"Authorization": f"Bearer {secret}-secret-key"}).status_code == 200
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.add_init_script("sessionStorage.setItem('fgw-key', 'admin-key')")
            page.goto(f"{gw.url}/ui")
            page.wait_for_function("document.querySelectorAll('#usage tbody tr').length === 3")
            table = page.inner_text("#usage")
            assert "search-team" in table and "docs-bot" in table
            assert page.inner_text("#usage-key-labels").split() == ["search-team", "docs-bot"] or \
                sorted(page.inner_text("#usage-key-labels").split()) == ["docs-bot", "search-team"]
            page.select_option("#usage-measure", "cost")
            assert page.eval_on_selector("#chart-usage-model", "svg => svg.querySelectorAll('polyline').length") == 2
            shots = os.environ.get("FGW_SCREENSHOTS")
            section = page.locator("#usage-section")
            section.screenshot(path=str(Path(shots) / "usage.png") if shots else str(tmp_path / "usage.png"))
            team = context.new_page()
            team.add_init_script("sessionStorage.setItem('fgw-key', 'docs-secret-key')")
            team.goto(f"{gw.url}/ui")
            team.wait_for_function("document.querySelectorAll('#usage tbody tr').length >= 1")
            assert "search-team" not in team.inner_text("#usage") and "docs-bot" in team.inner_text("#usage")
        finally:
            context.close()
