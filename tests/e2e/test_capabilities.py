"""What the gateway says when no model can take a request (issue 32, items 4-6), one rule everywhere: nothing in
the registry can do it → a 400 saying what to declare; a capable model exists but the upstream lacks it → a 503
with every candidate, why it was skipped and the command that brings one (catalog: ``foundry-gateway pull``; a
local folder, compiled: restart), which the openai SDK is told not to retry; ``/v1/route`` and
``foundry-gateway select`` show the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, write_registry

TOOL = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("capabilities")
    compiled = folder / "my-model"
    compiled.mkdir()
    registry = write_registry(folder / "models.json", [
        {"name": "chat-a", "task": "chat", "min_ram_gb": 1, "context_length": 512, "default_max_tokens": 32},
        {"name": "tools-b", "task": "chat", "min_ram_gb": 1, "capabilities": ["chat", "tools"]},
        {"name": "my-model", "task": "code", "min_ram_gb": 1, "path": str(compiled)},
    ])
    with UpstreamProcess(models=["chat-a"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, env=FAKE_ENV, log_path=folder / "gw.log") as gw:
        gw.wait_ready()
        yield gw


def _refusals(gw: GatewayProcess) -> float:
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        if line.startswith('gateway_rejections_total{reason="no_viable_model"}'):
            return float(line.split()[1])
    return 0.0


def test_a_capable_model_the_upstream_lacks_is_a_503_with_candidates_and_the_fix(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=3, timeout=30)
    before = _refusals(gateway)
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="auto", messages=HI, tools=[TOOL])  # type: ignore[list-item]
    assert refused.value.status_code == 503
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "no_viable_model"
    assert error["fix"] == "foundry-gateway pull tools-b" and "foundry-gateway pull tools-b" in error["message"]
    assert {c["model"]: c["reason"] for c in error["candidates"]} == {
        "chat-a": "no tools", "tools-b": "not available on the upstream"}
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert _refusals(gateway) - before == 1  # the SDK (max_retries=3) asked once: retrying cannot help
    route = httpx.get(f"{gateway.base_url}/route", params={"tools": "true"}, timeout=10)
    assert route.status_code == 503 and route.json()["error"]["candidates"] == error["candidates"]


def test_what_no_registry_model_can_do_is_a_400_saying_what_to_declare(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="capabilities"):
        client.chat.completions.create(model="auto", messages=HI, response_format=schema)  # type: ignore[arg-type]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    with pytest.raises(openai.BadRequestError, match="capabilities"):
        client.chat.completions.create(model="auto", messages=image)  # type: ignore[arg-type]


def test_a_compiled_model_not_yet_registered_says_restart_not_pull(gateway: GatewayProcess) -> None:
    """Item 6: after ``compile`` the registry has the model and the runtime does not yet."""
    answer = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30,
                        json={"model": "my-model", "messages": HI})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert "restart the gateway" in error["message"] and "pull" not in error["message"]
    assert "restart" in error["fix"]


def test_select_shows_the_gateways_refusal_and_never_decides_alone(gateway: GatewayProcess) -> None:
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent"}
    done = subprocess.run([sys.executable, "-m", "app.cli", "select", "--tools", "--gateway", gateway.url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    assert "503" in done.stderr and "foundry-gateway pull tools-b" in done.stderr
    assert "tools-b\t1 GiB\tskipped\tnot available on the upstream" in done.stdout  # the candidates, in a pipe
    assert "selected" not in done.stdout and "no gateway asked" not in done.stderr
    as_json = subprocess.run([sys.executable, "-m", "app.cli", "select", "--tools", "--gateway", gateway.url,
                              "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"]["fix"] == "foundry-gateway pull tools-b"


def test_a_path_that_does_not_exist_is_refused_by_registry_add(tmp_path: Path) -> None:
    """Item 8 (registry add): a missing folder is a one-line error, not an entry that can never load."""
    registry = write_registry(tmp_path / "models.json", [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}])
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_REGISTRY_PATH": str(registry)}
    done = subprocess.run([sys.executable, "-m", "app.cli", "registry", "add", "ghost", "--task", "chat",
                           "--min-ram-gb", "1", "--path", str(tmp_path / "nowhere")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "nowhere" in done.stderr and "Traceback" not in done.stderr


def test_a_budget_over_the_context_is_a_400_naming_it_and_a_default_is_said(gateway: GatewayProcess) -> None:
    """Item 10: max_tokens over the context came back as the runtime's raw text with code null; the budget the
    gateway adds when a request has none cut answers without a word."""
    over = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30,
                      json={"model": "chat-a", "messages": HI, "max_tokens": 5000})
    assert over.status_code == 400
    error = over.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert "'chat-a' has a context of 512 tokens" in error["message"]
    plain = httpx.post(f"{gateway.base_url}/chat/completions", timeout=30, json={"model": "chat-a", "messages": HI})
    assert plain.status_code == 200  # an OpenAI-kind upstream takes no budget: none added, none said
    assert "x-gateway-default-max-tokens" not in plain.headers  # Foundry Local's: tests/e2e/test_foundry_local.py
