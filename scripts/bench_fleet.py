"""Fleet scaling: does a front over N nodes give N times one node's throughput, and what does it cost?

Nodes here are real node gateways, each in front of the in-repo fake upstream with a fixed "capacity" (2 cores'
worth of streams: past that every stream slows in proportion — throughput set by time, not CPU, since a 2-core
machine cannot show CPU-bound nodes scaling). For 1, 2 and 4 nodes it drives saturating streaming load (8
clients per node) through one front and reports req/s against N x one node's, and the front's CPU per request
against a node's (process CPU time over the measured window ÷ requests each handled).

  .venv/bin/python scripts/bench_fleet.py [--seconds 6] [--nodes 1,2,4] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.upstream import UpstreamProcess  # noqa: E402
from tests.helpers import GatewayProcess, write_registry  # noqa: E402

ENV = {"GATEWAY_UPSTREAM_KIND": "openai", "GATEWAY_HOST_RAM_GB": "16", "GATEWAY_ACCESS_LOG": "false",
       "GATEWAY_ADAPTIVE_CONCURRENCY": "false", "GATEWAY_MODEL_CONCURRENCY": "256", "GATEWAY_MAX_IN_FLIGHT": "1024",
       "GATEWAY_REGISTRY_WATCH_INTERVAL": "0"}
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}


async def drive(url: str, clients: int, seconds: float) -> tuple[int, Counter[str], float]:
    """Back-to-back streams from ``clients`` keep-alive clients: (completed, by node, measured seconds)."""
    by_node: Counter[str] = Counter()
    done = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        stop = time.monotonic() + seconds

        async def one() -> None:
            nonlocal done
            while time.monotonic() < stop and done < 50_000:
                async with client.stream("POST", f"{url}/v1/chat/completions", json=BODY) as r:
                    await r.aread()
                    if r.status_code == 200:
                        done += 1
                        by_node[r.headers.get("x-gateway-node", "direct")] += 1

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(clients)))
        return done, by_node, time.monotonic() - started


def cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run(count: int, seconds: float, tmp: Path) -> dict[str, Any]:
    registry = write_registry(tmp / "models.json", [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}])
    with ExitStack() as stack:
        nodes = []
        for i in range(count):
            up = stack.enter_context(UpstreamProcess(models=["chat-a"]))
            up.configure(chunks=8, chunk_delay_ms=25, capacity=2)
            node = stack.enter_context(GatewayProcess(upstream=up.url, registry=registry, env=ENV,
                                                      log_path=tmp / f"n{count}-{i}.log"))
            node.wait_ready()
            nodes.append(node)
        front = stack.enter_context(GatewayProcess(registry=registry, log_path=tmp / f"front{count}.log", env={
            **ENV, "GATEWAY_NODES": ",".join(n.url for n in nodes), "GATEWAY_NODE_POLL_INTERVAL": "0.5"}))
        front.wait_ready()
        asyncio.run(drive(front.url, 4 * count, 1.0))  # warm-up
        before = {"front": cpu(front.pid), "node": cpu(nodes[0].pid)}
        done, by_node, took = asyncio.run(drive(front.url, 8 * count, seconds))
        front_cpu, node_cpu = cpu(front.pid) - before["front"], cpu(nodes[0].pid) - before["node"]
        node0 = by_node.get(nodes[0].url.removeprefix("http://"), 0)
        return {"nodes": count, "requests": done, "req_s": done / took, "by_node": dict(by_node),
                "front_cpu_ms_per_request": 1000 * front_cpu / max(done, 1),
                "node_cpu_ms_per_request": 1000 * node_cpu / max(node0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per fleet size")
    parser.add_argument("--nodes", default="1,2,4", help="fleet sizes")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (int(n) for n in args.nodes.split(",")):
            rows.append(run(count, args.seconds, Path(tmp)))
    base = rows[0]["req_s"] / rows[0]["nodes"]
    table = Table(title="fleet scaling (fake nodes: 2 cores' worth of streams each, 200 ms per stream)")
    for name in ("nodes", "req/s", "vs N x one node", "spread", "front CPU ms/req", "node CPU ms/req", "ratio"):
        table.add_column(name, justify="right")
    for row in rows:
        ratio = row["front_cpu_ms_per_request"] / max(row["node_cpu_ms_per_request"], 1e-9)
        table.add_row(str(row["nodes"]), f"{row['req_s']:.1f}", f"{row['req_s'] / (base * row['nodes']):.2f}",
                      " / ".join(str(v) for v in row["by_node"].values()), f"{row['front_cpu_ms_per_request']:.2f}",
                      f"{row['node_cpu_ms_per_request']:.2f}", f"{ratio:.2f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
