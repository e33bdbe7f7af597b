"""Shared fixtures: real servers on 127.0.0.1, started once per module and stopped by PID."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, free_port, require_program, wait_for, write_registry

# The registry the fake-upstream tests route over. Host RAM is pinned to 16 GiB (budget 15 with the
# default 1 GiB reserve), so "chat-big" never fits and "vision" has nothing that fits.
FAKE_REGISTRY: list[dict[str, Any]] = [
    {"name": "chat-big", "task": "chat", "min_ram_gb": 64, "notes": "never fits"},
    {"name": "chat-a", "task": "chat", "min_ram_gb": 4},
    {"name": "chat-b", "task": "chat", "min_ram_gb": 2, "aliases": ["b"]},
    {"name": "code-a", "task": "code", "min_ram_gb": 1},
    {"name": "ghost", "task": "code", "min_ram_gb": 1, "notes": "not on the upstream"},
    {"name": "vision-xl", "task": "vision", "min_ram_gb": 128},
]
FAKE_MODELS = ["chat-big", "chat-a", "chat-b", "code-a"]
FAKE_ENV = {"GATEWAY_UPSTREAM_KIND": "openai", "GATEWAY_HOST_RAM_GB": "16", "GATEWAY_ACCESS_LOG": "false"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(models=FAKE_MODELS) as up:
        yield up


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(tmp_path_factory.mktemp("registry") / "models.json", FAKE_REGISTRY)


def serve_fake(request: pytest.FixtureRequest, env: dict[str, str]) -> Iterator[GatewayProcess]:
    """A ready gateway in front of the module's fake upstream, with extra settings; logs in a temp dir."""
    upstream: UpstreamProcess = request.getfixturevalue("upstream")
    registry: Path = request.getfixturevalue("registry_file")
    log = request.getfixturevalue("tmp_path_factory").mktemp("gateway") / "gateway.log"
    with GatewayProcess(upstream=upstream.url, registry=registry, env={**FAKE_ENV, **env}, log_path=log) as gw:
        gw.wait_ready()
        yield gw


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    yield from serve_fake(request, {})


@pytest.fixture()
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def _reset_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


# --- a real redis-server (Debian's package, installed by `make redis`) ----------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    program = require_program("redis-server")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    try:
        assert wait_for(lambda: _pings(client), timeout=10)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def redis_url(redis_server: tuple[str, subprocess.Popen[bytes]]) -> str:
    return redis_server[0]


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
