"""A bounded soak: mixed streaming and non-streaming traffic at concurrency 64 with client aborts and
upstream faults. Afterwards connections, file descriptors and RSS are back near their baseline, and the
gateway's request counter equals what the load generator sent."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, wait_for

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))
CONCURRENCY = 64
MAX_REQUESTS = 20_000


def requests_counted(gw: GatewayProcess) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "gateway_requests_total")


def footprint(pid: int) -> tuple[int, int, float]:
    proc = psutil.Process(pid)
    return proc.num_fds(), len(proc.net_connections()), proc.memory_info().rss / 2**20


async def load(gw: GatewayProcess, up: UpstreamProcess, deadline: float) -> dict[str, int]:
    sent = {"json": 0, "stream": 0, "aborted": 0, "errors": 0}
    rng = random.Random(7)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=gw.base_url, limits=limits, timeout=15) as client:

        async def worker() -> None:
            while time.monotonic() < deadline and sum(sent.values()) - sent["errors"] < MAX_REQUESTS:
                kind = rng.choices(["json", "stream", "aborted"], [5, 4, 1])[0]
                body = {"messages": [{"role": "user", "content": "soak"}], "max_tokens": 8,
                        "stream": kind != "json"}
                sent[kind] += 1
                try:
                    if kind == "json":
                        await client.post("/chat/completions", json=body)
                    else:
                        async with client.stream("POST", "/chat/completions", json=body) as response:
                            async for _ in response.aiter_raw():
                                if kind == "aborted":
                                    break
                except httpx.HTTPError:
                    sent["errors"] += 1

        async def chaos() -> None:
            modes = [("reset", {"after": 2}), ("status", {"status": 500}), ("stall", {"after": 1}),
                     ("garbage_sse", {}), ("close", {})]
            while time.monotonic() < deadline:
                mode, params = rng.choice(modes)
                await asyncio.to_thread(up.fault, mode, count=3, **params)
                await asyncio.sleep(1.0)

        await asyncio.gather(chaos(), *(worker() for _ in range(CONCURRENCY)))
    return sent


@pytest.mark.timeout(SOAK_SECONDS + 120)
def test_soak_leaves_no_leaks_and_counts_every_request(
    upstream: UpstreamProcess, registry_file: Path, tmp_path: Path
) -> None:
    env = {**FAKE_ENV, "GATEWAY_IDLE_TIMEOUT": "1", "GATEWAY_FIRST_BYTE_TIMEOUT": "2",
           "GATEWAY_UPSTREAM_KEEPALIVE": "2", "GATEWAY_MODEL_CONCURRENCY": "64",
           "GATEWAY_ADAPTIVE_CONCURRENCY": "false", "GATEWAY_QUEUE_SIZE": "64", "GATEWAY_BREAKER_COOLDOWN": "2"}
    upstream.configure(chunks=8, chunk_delay_ms=2)
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        for _ in range(20):  # warm up: imports, pools, label children
            httpx.post(f"{gw.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "w"}]})
        warm = requests_counted(gw)
        fds0, conns0, rss0 = footprint(gw.pid)

        sent = asyncio.run(load(gw, upstream, time.monotonic() + SOAK_SECONDS))
        total_sent = sent["json"] + sent["stream"] + sent["aborted"]
        assert total_sent > 500, sent

        upstream.reset()
        wait_for(lambda: requests_counted(gw) - warm == total_sent and "gateway_requests_in_flight 0.0" in httpx.get(
            f"{gw.url}/metrics").text, 20, interval=0.2)  # aborted streams are counted when the gateway notices
        assert requests_counted(gw) - warm == total_sent, sent

        def settled() -> bool:  # idle upstream connections expire (2 s) and the 1 s refresh loop prunes them
            fds, conns, _ = footprint(gw.pid)
            return fds <= fds0 + 8 and conns <= conns0 + 8

        wait_for(settled, 15, interval=0.2)
        fds1, conns1, rss1 = footprint(gw.pid)
        print(f"soak: {sent}; fds {fds0}->{fds1}, connections {conns0}->{conns1}, RSS {rss0:.0f}->{rss1:.0f} MiB")
        assert fds1 <= fds0 + 8, (fds0, fds1)
        assert conns1 <= conns0 + 8, (conns0, conns1)
        assert rss1 <= rss0 + 40, (rss0, rss1)
        # the fault storm may have left both models cooling down (2 s): wait until one is routable again
        wait_for(lambda: httpx.get(f"{gw.base_url}/route").status_code == 200, 10, interval=0.1)
        after = httpx.post(f"{gw.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "after"}]})
        assert after.status_code == 200, after.text
