"""Faster than calling the runtime directly: no delayed-ACK stall on reused upstream connections, adaptive
per-model concurrency that settles at the runtime's knee, priority classes with ageing, requests grouped by
model when models cannot co-reside, loads nobody waits for undone."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess

MESSAGES = [{"role": "user", "content": "hello"}]


def first_content_times(base_url: str, n: int, **body: object) -> list[float]:
    """Seconds to the first content event of ``n`` streams sent one after another on one keep-alive client."""
    times = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            started = time.perf_counter()
            with client.stream("POST", f"{base_url}/chat/completions",
                               json={"messages": MESSAGES, "stream": True, "max_tokens": 8, **body}) as r:
                seen = False
                for line in r.iter_lines():  # read to the end: the connection goes back to the pool
                    if not seen and '"content":"' in line and '"content":""' not in line:
                        times.append(time.perf_counter() - started)
                        seen = True
    return times


@pytest.fixture()
def nagle_upstream(upstream: UpstreamProcess) -> Iterator[UpstreamProcess]:
    upstream.configure(nagle=True, chunks=4)
    yield upstream


@pytest.mark.parametrize("tuning", ["true", "false"])
def test_first_token_is_not_held_on_a_reused_upstream_connection(nagle_upstream: UpstreamProcess,
                                                                  registry_file: Path, tmp_path: Path,
                                                                  tuning: str) -> None:
    """The upstream writes like Foundry Local (Nagle on, head and events in small writes). On a reused
    connection a delayed ACK holds each first event ~40 ms; re-armed TCP_QUICKACK takes the stall away
    (and with the tuning off, the stall is there: the test sees what it claims to)."""
    env = {**FAKE_ENV, "GATEWAY_UPSTREAM_TCP_TUNING": tuning}
    with GatewayProcess(upstream=nagle_upstream.url, registry=registry_file, env=env,
                        log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        times = first_content_times(gw.base_url, 12, model="chat-a")[2:]  # after the first: reused connections
    median = statistics.median(times)
    if tuning == "true":
        assert median < 0.02, times
    else:
        assert median > 0.03, times  # the stall this fixes
