"""What the gateway adds on the hot path: latency, throughput and CPU per request, against direct.

  make bench                  # or: .venv/bin/python scripts/bench_overhead.py [--seconds 5] [--json]

Starts the in-repo fake upstream and the gateway (routing, metrics, access log and API-key auth all on,
one worker), both pinned to CPU 1 like the shared harness does, and drives each with a closed-loop
load generator on CPU 0 built on the gateway's own lean HTTP client: non-streaming at concurrency 1
and 32, streaming (32 chunks, 1 ms apart) at concurrency 1 and 32. Every cell is bounded by time and
by request count. Gateway CPU comes from /proc (psutil) before and after each cell.

This is a benchmark, not a test: numbers go to docs/performance.md, nothing asserts on them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.upstream.transport import FastTransport  # noqa: E402
from tests.helpers import free_port  # noqa: E402

KEY = "bench-key"
BODY = {"model": "fake", "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 32}


def pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > cpu:  # type: ignore[operator]
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            os.sched_setaffinity(proc.pid, {cpu})


def start_processes(chunk_delay_ms: float) -> tuple[subprocess.Popen[str], subprocess.Popen[bytes], str, str]:
    upstream = subprocess.Popen([sys.executable, "-m", "tests.fakes.upstream", "--port", "0", "--models", "fake"],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert upstream.stdout is not None
    up_url = upstream.stdout.readline().split()[1]
    httpx.post(f"{up_url}/_config", json={"chunks": 32, "chunk_delay_ms": chunk_delay_ms})
    port = free_port()
    env = {**os.environ, "GATEWAY_UPSTREAM_MODE": "external", "GATEWAY_UPSTREAM_KIND": "openai",
           "GATEWAY_UPSTREAM_URL": up_url, "GATEWAY_REGISTRY_PATH": str(ROOT / "scripts/bench-registry.json"),
           "GATEWAY_API_KEYS": KEY, "GATEWAY_ACCESS_LOG": "true", "GATEWAY_ENV_FILE": "/nonexistent",
           "GATEWAY_MODEL_CONCURRENCY": "256", "GATEWAY_ADAPTIVE_CONCURRENCY": "false",
           "GATEWAY_MAX_IN_FLIGHT": "512", "GATEWAY_PORT": str(port)}
    started = time.perf_counter()
    gateway = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    gw_url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - started < 30:
        try:
            if httpx.get(f"{gw_url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.02)
    print(f"gateway start to ready: {time.perf_counter() - started:.2f} s", file=sys.stderr)
    pin(upstream.pid, 1)
    pin(gateway.pid, 1)
    os.sched_setaffinity(0, {0}) if hasattr(os, "sched_setaffinity") else None
    return upstream, gateway, up_url, gw_url


async def cell(url: str, stream: bool, concurrency: int, seconds: float, max_requests: int) -> dict[str, Any]:
    transport = FastTransport(connect_timeout=5)
    target = httpx.URL(f"{url}/v1/chat/completions")
    body = json.dumps({**BODY, "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})})
    headers = [("content-type", "application/json"), ("authorization", f"Bearer {KEY}")]
    latencies: list[float] = []
    firsts: list[float] = []
    deadline = time.perf_counter() + seconds
    errors = 0

    async def one() -> None:
        nonlocal errors
        started = time.perf_counter()
        response = await transport.handle_async_request(httpx.Request("POST", target, content=body, headers=headers))
        first = 0.0
        async for _ in response.stream:  # type: ignore[union-attr]
            first = first or time.perf_counter()
        await response.aclose()
        if response.status_code != 200:
            errors += 1
        latencies.append(time.perf_counter() - started)
        firsts.append(first - started)

    async def worker() -> None:
        await one()  # warm-up: connection set-up is not measured
        latencies.clear()
        firsts.clear()
        while time.perf_counter() < deadline and len(latencies) < max_requests:
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await transport.aclose()
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / seconds,
            "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
            "ttfb_p50_ms": 1000 * statistics.median(firsts)}


def cpu_seconds(pid: int) -> float:
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each cell")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    upstream, gateway, up_url, gw_url = start_processes(chunk_delay_ms=1.0)
    scenarios = [("non-streaming", False, 1), ("non-streaming", False, 32), ("streaming", True, 1),
                 ("streaming", True, 32)]
    results = []
    try:
        for name, stream, concurrency in scenarios:
            row: dict[str, Any] = {"scenario": name, "concurrency": concurrency}
            for label, url in (("direct", up_url), ("gateway", gw_url)):
                cpu0 = cpu_seconds(gateway.pid)
                out = asyncio.run(cell(url, stream, concurrency, args.seconds, 50_000))
                cpu = cpu_seconds(gateway.pid) - cpu0
                row[label] = out
                if label == "gateway":
                    row["gateway_cpu_us_per_request"] = 1e6 * cpu / max(1, out["requests"])
            results.append(row)
        rss = psutil.Process(gateway.pid).memory_info().rss / 2**20
    finally:
        for proc in (gateway, upstream):
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    if args.json:
        print(json.dumps({"results": results, "gateway_rss_mib": rss}, indent=2))
        return
    print("| scenario | conc. | direct p50 ms | gateway p50 ms | added p50 ms | added p99 ms | direct req/s "
          "| gateway req/s | gateway CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        d, g = r["direct"], r["gateway"]
        print(f"| {r['scenario']} | {r['concurrency']} | {d['p50_ms']:.3f} | {g['p50_ms']:.3f} | "
              f"{g['p50_ms'] - d['p50_ms']:+.3f} | {g['p99_ms'] - d['p99_ms']:+.3f} | {d['rps']:.0f} | "
              f"{g['rps']:.0f} | {r['gateway_cpu_us_per_request']:.0f} |")
    print(f"\ngateway RSS after the run: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
