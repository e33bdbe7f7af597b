"""Graceful shutdown and the access log, on a gateway started like users start it."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for

MESSAGES = [{"role": "user", "content": "a secret prompt"}]


def test_sigterm_lets_in_flight_streams_finish(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> None:
    upstream.configure(chunks=10, chunk_delay_ms=150)
    gw = GatewayProcess(upstream=upstream.url, registry=registry_file, env=FAKE_ENV, log_path=tmp_path / "g.log")
    gw.start().wait_ready()
    result: dict[str, object] = {}

    def stream() -> None:
        body = {"messages": MESSAGES, "stream": True, "max_tokens": 8}
        r = httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=20)
        result["status"], result["text"] = r.status_code, r.text

    thread = threading.Thread(target=stream)
    thread.start()
    assert wait_for(lambda: upstream.stats()["streams_started"] == 1)  # the stream is under way
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:  # no new connections once draining
        try:
            return httpx.get(f"{gw.url}/healthz", timeout=1).status_code != 200
        except httpx.HTTPError:
            return True

    assert wait_for(refused, 5)
    thread.join(20)
    assert result["status"] == 200 and str(result["text"]).rstrip().endswith("data: [DONE]")
    assert gw.proc.wait(20) in (0, -signal.SIGTERM)


def test_access_log_line_and_request_id(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> None:
    env = {**FAKE_ENV, "GATEWAY_ACCESS_LOG": "true"}
    log = tmp_path / "g.log"
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=log) as gw:
        gw.wait_ready()
        r = httpx.post(f"{gw.base_url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 4},
                       headers={"X-Request-ID": "req-42", "X-Task": "chat"})
        assert r.headers["x-request-id"] == "req-42"
        generated = httpx.post(f"{gw.base_url}/chat/completions", json={"messages": MESSAGES, "stream": True})
        assert generated.headers["x-request-id"] and generated.headers["x-request-id"] != "req-42"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    entry = next(line for line in lines if line["request_id"] == "req-42")
    assert entry["task"] == "chat" and entry["model"] == "chat-a" and entry["status"] == 200
    assert entry["reason"] == "auto" and entry["prompt_tokens"] > 0 and entry["completion_tokens"] > 0
    assert {"duration_ms", "upstream_ms", "overhead_ms", "queue_ms", "load_ms", "ttft_ms"} <= set(entry)
    streamed = next(line for line in lines if line["request_id"] == generated.headers["x-request-id"])
    assert streamed["stream"] is True and streamed["ttft_ms"] > 0
    assert "secret prompt" not in log.read_text()  # no prompt text unless GATEWAY_LOG_PROMPTS=true


@pytest.mark.parametrize("command", ["server", "service"])
def test_external_mode_discovers_the_url_from_the_foundry_cli(upstream: UpstreamProcess, registry_file: Path,
                                                                tmp_path: Path, command: str) -> None:
    """Foundry Local's port can change between restarts: with no URL set, ask the CLI — `foundry server status`
    since CLI 0.10, `foundry service status` before it."""
    fake_cli = tmp_path / "bin" / "foundry"
    fake_cli.parent.mkdir()
    fake_cli.write_text("#!/bin/sh\n"
                        f'if [ "$1 $2" = "{command} status" ]; then\n'
                        f"  echo '🟢 Model management service is running on {upstream.url}/openai/status'\n"
                        "else echo \"Unknown command $1\" >&2; exit 1; fi\n")
    fake_cli.chmod(0o755)
    env = {**FAKE_ENV, "GATEWAY_UPSTREAM_MODE": "external", "PATH": f"{fake_cli.parent}:/usr/bin:/bin",
           "GATEWAY_ADMIN_API_KEY": "admin"}
    gw = GatewayProcess(registry=registry_file, env=env, log_path=tmp_path / "g.log")
    with gw:
        assert "url" not in gw.wait_ready()["upstream"]  # where the upstream runs: for the admin key only
        details = httpx.get(f"{gw.url}/readyz", headers={"Authorization": "Bearer admin"}).json()
        assert details["upstream"]["url"] == upstream.url
