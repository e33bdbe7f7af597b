"""Gateway overhead on Foundry Local's ``/v1/embeddings`` and ``/v1/responses``, on the real runtime.

Starts ``foundry-gateway serve`` in managed mode with the repo's ``models.json``, warms ``tiny-embed`` and
``tiny-chat`` through it, then drives the same keep-alive clients (one ``httpx.AsyncClient`` each, requests
back to back) straight at the runtime and through the gateway, alternating direct/gateway every round
(order flipped each round so the VM's drift falls on both). Endpoints: embeddings (two short inputs),
responses (``max_output_tokens`` 32) and streaming responses read to the end. Each cell is bounded by
``--seconds`` and by 5000 requests. Reported: req/s, latency p50/p95 and, streaming, TTFT p50 (first
``response.output_text.delta`` event).

  .venv/bin/python scripts/bench_surface.py [--seconds 6] [--rounds 2] [--clients 1,8] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import GatewayProcess  # noqa: E402

ADMIN = {"Authorization": "Bearer admin"}
MAX_REQUESTS = 5000
ENDPOINTS = ("embeddings", "responses", "responses-stream")
MODELS = {"embeddings": ("tiny-embed", "tiny-embed-generic-cpu:1"),
          "responses": ("tiny-chat", "tiny-chat-generic-cpu:1")}  # gateway name, upstream id


@dataclass
class Cell:
    completed: int = 0
    errors: int = 0
    seconds: float = 0.0
    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)

    def add(self, other: Cell) -> None:
        self.completed += other.completed
        self.errors += other.errors
        self.seconds += other.seconds
        self.latency += other.latency
        self.ttft += other.ttft

    def row(self) -> dict[str, float]:
        def pct(values: list[float], q: int) -> float:
            return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else float("nan")

        return {"req_s": self.completed / max(self.seconds, 1e-9), "p50_ms": pct(self.latency, 50),
                "p95_ms": pct(self.latency, 95), "ttft_p50_ms": pct(self.ttft, 50),
                "completed": self.completed, "errors": self.errors}


def body(endpoint: str, model: str, n: int) -> dict[str, Any]:
    if endpoint == "embeddings":
        return {"model": model, "input": ["a short sentence", "another one"]}
    return {"model": model, "input": f"Tell me about number {n}", "max_output_tokens": 32,
            "stream": endpoint == "responses-stream"}


async def one(http: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> float | None:
    """One request read to the end; returns TTFT (streaming) or 0.0, or None on error."""
    if not payload.get("stream"):
        response = await http.post(url, json=payload)
        return 0.0 if response.status_code == 200 else None
    began, first = time.perf_counter(), 0.0
    async with http.stream("POST", url, json=payload) as response:
        if response.status_code != 200:
            await response.aread()
            return None
        async for line in response.aiter_lines():
            if not first and "response.output_text.delta" in line:
                first = time.perf_counter() - began
    return first


async def drive(endpoint: str, url: str, model: str, clients: int, seconds: float) -> Cell:
    cell = Cell(seconds=seconds)
    deadline = time.monotonic() + seconds
    issued = 0

    async def client(index: int) -> None:
        nonlocal issued
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as http:
            while time.monotonic() < deadline and issued < MAX_REQUESTS:
                issued += 1
                began = time.perf_counter()
                try:
                    ttft = await one(http, url, body(endpoint, model, index * 100_000 + issued))
                except httpx.HTTPError:
                    ttft = None
                if ttft is None:
                    cell.errors += 1
                    continue
                cell.completed += 1
                cell.latency.append(time.perf_counter() - began)
                if ttft:
                    cell.ttft.append(ttft)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating direct/gateway rounds (default 2)")
    parser.add_argument("--clients", default="1,8", help="comma-separated concurrency levels (default 1,8)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every number to this file")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir, GatewayProcess(env={
        "GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": tmpdir, "GATEWAY_ADMIN_API_KEY": "admin",
        "GATEWAY_ACCESS_LOG": "false", "GATEWAY_REGISTRY_WATCH_INTERVAL": "0"},
            log_path=Path(tmpdir) / "gateway.log") as gw:
        gw.wait_ready(60)
        runtime = httpx.get(f"{gw.url}/admin/status", headers=ADMIN, timeout=10).json()["upstream"]["url"]
        for endpoint in ("embeddings", "responses"):  # loads both models, so loads are not measured
            warm = httpx.post(f"{gw.base_url}/{endpoint}", json=body(endpoint, MODELS[endpoint][0], 0), timeout=300)
            if warm.status_code != 200:
                sys.exit(f"warm-up of {endpoint} failed: {warm.status_code} {warm.text[:300]}")
        print(f"runtime: {runtime}\ngateway: {gw.base_url}", flush=True)
        for endpoint in ENDPOINTS:
            route = endpoint.removesuffix("-stream")
            via, upstream_id = MODELS[route]
            targets = {"direct": (f"{runtime}/catalogs/local/v1/{route}", upstream_id),
                       "gateway": (f"{gw.base_url}/{route}", via)}
            for clients in levels:
                cells = {name: Cell() for name in targets}
                for round_ in range(args.rounds):
                    for name in (list(targets) if round_ % 2 == 0 else list(reversed(targets))):
                        url, model = targets[name]
                        cells[name].add(asyncio.run(drive(endpoint, url, model, clients, args.seconds)))
                row: dict[str, Any] = {"endpoint": endpoint, "clients": clients,
                                       **{n: c.row() for n, c in cells.items()}}
                rows.append(row)
                print(f"{endpoint} x{clients}: direct {row['direct']['req_s']:.1f} req/s, "
                      f"gateway {row['gateway']['req_s']:.1f} req/s", flush=True)
    table = Table(title=f"gateway vs direct Foundry Local ({args.seconds:g} s x {args.rounds} rounds per cell)")
    for column in ("endpoint", "clients", "direct req/s", "gateway req/s", "gw/direct", "direct p50/p95 ms",
                   "gateway p50/p95 ms", "direct TTFT p50", "gateway TTFT p50", "errors d/g"):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    for row in rows:
        d, g = row["direct"], row["gateway"]
        ttft = [f"{c['ttft_p50_ms']:.1f}" if row["endpoint"] == "responses-stream" else "-" for c in (d, g)]
        table.add_row(row["endpoint"], str(row["clients"]), f"{d['req_s']:.1f}", f"{g['req_s']:.1f}",
                      f"{g['req_s'] / max(d['req_s'], 1e-9):.2f}", f"{d['p50_ms']:.1f} / {d['p95_ms']:.1f}",
                      f"{g['p50_ms']:.1f} / {g['p95_ms']:.1f}", *ttft, f"{d['errors']}/{g['errors']}")
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps({"seconds": args.seconds, "rounds": args.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
