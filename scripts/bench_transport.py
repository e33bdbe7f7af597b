"""Transport-only benchmark: CPU per request of the upstream HTTP client alone, for each transport the
gateway can use (``GATEWAY_UPSTREAM_TRANSPORT``): this project's ``FastTransport``, httpx's own pool
(httpcore) and ``httpx-aiohttp``.

The whole-gateway numbers (docs/performance.md, shared harness) include uvicorn, routing, metrics and
logging, which are the same whatever the transport; this isolates the part the choice changes. Each
transport sends the gateway's own kind of request (``httpx.Request`` handed straight to the transport,
raw byte stream read to the end) to the in-repo fake upstream, pinned to another CPU, and the client
process's CPU time is divided by the requests it completed.

  .venv/bin/python scripts/bench_transport.py [--seconds 4] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.settings import load_settings  # noqa: E402
from app.upstream.client import make_transport  # noqa: E402
from tests.fakes.upstream import UpstreamProcess  # noqa: E402

SCENARIOS = (("json", False, 1), ("json", False, 32), ("stream", True, 32))
TRANSPORTS = ("fast", "httpx", "aiohttp")


async def cell(transport: httpx.AsyncBaseTransport, url: str, stream: bool, concurrency: int,
               seconds: float) -> tuple[int, float]:
    body = json.dumps({"model": "m", "stream": stream, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    headers = [("content-type", "application/json"), ("host", url.split("/")[2])]
    target = httpx.URL(url + "/v1/chat/completions")
    timeout = httpx.Timeout(5.0, read=None).as_dict()
    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            request = httpx.Request("POST", target, content=body, headers=headers, extensions={"timeout": timeout})
            response = await transport.handle_async_request(request)
            async for _ in response.stream:  # type: ignore[union-attr]
                pass
            await response.aclose()
            done += 1

    await asyncio.gather(*(worker(time.monotonic() + 0.5) for _ in range(concurrency)))  # warm up
    done = 0
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker(wall + seconds) for _ in range(concurrency)))
    return done, (time.process_time() - cpu) / max(1, done) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each cell")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {0})
    results: dict[str, dict[str, Any]] = {}
    with UpstreamProcess(models=["m"]) as upstream:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
            os.sched_setaffinity(upstream.pid, {1})
        upstream.configure(chunks=32, chunk_delay_ms=1)  # streams paced like a model, as in the shared harness
        import uvloop

        for name in TRANSPORTS:
            settings = load_settings(upstream_transport=name, upstream_url=upstream.url, upstream_mode="external")

            async def run_all(settings: Any = settings) -> dict[str, Any]:
                transport = make_transport(settings)
                out: dict[str, Any] = {}
                for label, stream, concurrency in SCENARIOS:
                    count, us = await cell(transport, upstream.url, stream, concurrency, args.seconds)
                    out[f"{label} c{concurrency}"] = {"requests": count, "cpu_us_per_request": round(us, 1)}
                await transport.aclose()
                return out

            results[name] = uvloop.run(run_all())
    if args.json:
        print(json.dumps(results, indent=2))
        return
    cells = [f"{label} c{c}" for label, _, c in SCENARIOS]
    print("| transport | " + " | ".join(f"{c} CPU µs/req" for c in cells) + " |")
    print("|---|" + "---:|" * len(cells))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[c]['cpu_us_per_request']:.0f}" for c in cells) + " |")
    fast = results["fast"]
    for other in TRANSPORTS[1:]:
        ratios = ", ".join(f"{c} {results[other][c]['cpu_us_per_request'] / fast[c]['cpu_us_per_request']:.1f}×"
                           for c in cells)
        print(f"{other} costs {ratios} what fast costs")


if __name__ == "__main__":
    main()
