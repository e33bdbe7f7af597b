"""Each platform branch, with the platform faked where that is honest (no Windows or macOS machine here): the
supervisor's Windows process handling, the event loop choice, the cgroup reader absent, the transport without
poll(2), and the delayed-ACK fallback's choice."""

from __future__ import annotations

from pathlib import Path


def test_serve_on_asyncios_own_loop(tmp_path: Path) -> None:
    from tests.conftest import FAKE_ENV, FAKE_REGISTRY
    from tests.fakes.upstream import UpstreamProcess
    from tests.helpers import GatewayProcess, write_registry

    deep = tmp_path / ("a-long-directory-name-" * 6) / ("and-another-one-" * 6)  # longer than any terminal line
    deep.mkdir(parents=True)
    registry = write_registry(deep / "models.json", FAKE_REGISTRY)
    with UpstreamProcess(models=["chat-a"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, env={**FAKE_ENV, "GATEWAY_LOOP": "asyncio"},
            log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        import httpx

        body = {"model": "chat-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200 and "data: [DONE]" in r.read().decode()
    banner = next(line for line in (tmp_path / "gw.log").read_text().splitlines() if "foundry-gateway" in line)
    assert f"registry: {deep / 'models.json'}, loop: asyncio; keys: " in banner  # one line, whatever the path's length
    assert banner.endswith(")")
