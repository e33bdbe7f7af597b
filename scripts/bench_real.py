"""The gateway against calling Foundry Local directly, on the real runtime: ``make bench-real``.

Starts ``foundry-gateway serve`` in managed mode with the repo's tiny models, then drives the same
keep-alive clients (one ``httpx.AsyncClient`` each, the way apps and the openai SDK call) first straight
at the runtime and then through the gateway, row by row: 1, 4, 16, 32 and 64 concurrent streaming
clients, ``max_tokens`` 32, every tenth request of each client abandoned after its first content chunk.
Every cell is bounded in time and in requests. Per row: completed req/s, tokens/s, TTFT p50/p95, total
p50/p95, and the gateway/direct ratios.

Then the swap scenario: two models that cannot both fit (registry ``min_ram_gb`` 2 each, host RAM 3.5
GiB), 4 clients on each at once, through the gateway with requests grouped by model (the default
``GATEWAY_SWAP_HOLD``) and with plain alternation (``GATEWAY_SWAP_HOLD=0``): requests/s and model
loads per 100 requests.

  .venv/bin/python scripts/bench_real.py [--seconds 8] [--rounds 3] [--clients 1,4,16,32,64] [--json FILE]

Each row alternates direct and gateway cells (``--rounds``, order flipped every round) so that the VM's
drift falls on both; req/s is over all rounds, percentiles over all their requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import GatewayProcess, write_registry  # noqa: E402

ADMIN = {"Authorization": "Bearer bench-admin"}
MODEL_ID = "tiny-chat-generic-cpu:1"


@dataclass
class Cell:
    completed: int = 0
    abandoned: int = 0
    errors: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: Cell) -> None:
        for name in ("completed", "abandoned", "errors", "tokens", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ttft += other.ttft
        self.total += other.total

    def row(self) -> dict[str, float]:
        def pct(values: list[float], q: float) -> float:
            return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) >= 2 else float("nan")

        return {
            "req_s": self.completed / self.seconds, "tok_s": self.tokens / self.seconds,
            "ttft_p50": pct(self.ttft, 50), "ttft_p95": pct(self.ttft, 95),
            "total_p50": pct(self.total, 50), "total_p95": pct(self.total, 95),
            "completed": self.completed, "abandoned": self.abandoned, "errors": self.errors,
        }


async def drive(url: str, model: str | list[str], clients: int, seconds: float, warmup: float = 0.0,
                max_requests: int = 100_000) -> Cell:
    """``clients`` keep-alive clients streaming back to back at ``url``: ``warmup`` seconds unmeasured, then
    ``seconds`` measured. Only requests that finish inside the measured window count."""
    cell = Cell()
    started = time.monotonic() + warmup
    deadline = started + seconds
    issued = 0
    http_clients = [httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) for _ in range(clients)]

    async def client(index: int) -> None:
        nonlocal issued
        name = model if isinstance(model, str) else model[index % len(model)]
        http = http_clients[index]
        n = 0
        while time.monotonic() < deadline and issued < max_requests:
            measured = time.monotonic() >= started
            issued += measured
            n += 1
            abandon = n % 10 == 0
            body = {"model": name, "stream": True, "max_tokens": 32,
                    "messages": [{"role": "user", "content": f"Tell me about number {index * 1000 + n}"}]}
            began = time.perf_counter()
            first = 0.0
            tokens = 0
            try:
                async with http.stream("POST", url, json=body) as response:
                    if response.status_code != 200:
                        await response.aread()
                        cell.errors += measured
                        continue
                    async for line in response.aiter_lines():
                        if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                            tokens += 1
                            if not first:
                                first = time.perf_counter() - began
                                if abandon:
                                    break
            except httpx.HTTPError:
                cell.errors += measured
                continue
            if not started <= time.monotonic() <= deadline:
                continue  # finished during the warm-up or after the window: not counted
            if abandon:
                cell.abandoned += 1
                continue
            cell.completed += 1
            cell.tokens += tokens
            if first:
                cell.ttft.append(first)
            cell.total.append(time.perf_counter() - began)

    try:
        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        for http in http_clients:
            await http.aclose()
    cell.seconds = seconds
    return cell


def registry(path: Path, ram_gb: float) -> Path:
    return write_registry(path, [
        {"name": "tiny-chat", "task": "chat", "min_ram_gb": ram_gb, "upstream_id": "tiny-chat-generic-cpu:1",
         "context_length": 2048, "default_max_tokens": 64, "path": str(ROOT / "models/tiny-chat")},
        {"name": "tiny-chat-b", "task": "chat", "min_ram_gb": ram_gb, "upstream_id": "tiny-chat-b-generic-cpu:1",
         "context_length": 2048, "default_max_tokens": 64, "path": str(ROOT / "models/tiny-chat-b")},
    ])


def gateway(tmp: Path, name: str, **env: str) -> GatewayProcess:
    return GatewayProcess(registry=registry(tmp / f"{name}.json", float(env.pop("RAM", "0.25"))), env={
        "GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(tmp / "foundry"),
        "GATEWAY_ADMIN_API_KEY": "bench-admin", "GATEWAY_ACCESS_LOG": "false", "GATEWAY_QUEUE_SIZE": "256",
        "GATEWAY_REGISTRY_WATCH_INTERVAL": "0", **env}, log_path=tmp / f"{name}.log")


def loads(gw: GatewayProcess) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("gateway_model_load_duration_seconds_count"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each cell")
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/gateway rounds per row")
    parser.add_argument("--clients", default="1,4,16,32,64", help="concurrency levels")
    parser.add_argument("--skip-swap", action="store_true", help="only the direct-vs-gateway rows")
    parser.add_argument("--json", type=Path, help="write every number here too")
    parser.add_argument("--render", type=Path, help="print the tables of an earlier --json file and stop")
    args = parser.parse_args()
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return
    import uvloop

    levels = [int(c) for c in args.clients.split(",")]
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "seconds": args.seconds, "rounds": args.rounds,
                               "rows": [], "swap": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with gateway(tmp, "main") as gw:
            gw.wait_ready(60)
            upstream = httpx.get(f"{gw.url}/readyz", headers=ADMIN).json()["upstream"]["url"]
            direct = f"{upstream}/catalogs/local/v1/chat/completions"
            via = f"{gw.base_url}/chat/completions"
            uvloop.run(drive(via, "tiny-chat", 1, 1.0))  # loads the model
            print(f"direct: {direct}\ngateway: {via}\n", flush=True)
            targets = {"direct": (direct, MODEL_ID), "gateway": (via, "tiny-chat")}
            for clients in levels:
                row: dict[str, Any] = {"clients": clients}
                cells = {name: Cell() for name in targets}
                rates: dict[str, list[float]] = {name: [] for name in targets}
                for round_ in range(args.rounds):  # alternating order, so drift of the VM falls on both
                    for name in (list(targets) if round_ % 2 == 0 else list(reversed(targets))):
                        url, model = targets[name]
                        cell = uvloop.run(drive(url, model, clients, args.seconds, warmup=args.warmup))
                        rates[name].append(cell.completed / cell.seconds)
                        cells[name].add(cell)
                for name in targets:
                    row[name] = cells[name].row()
                    row[name]["req_s_rounds"] = [round(r, 1) for r in rates[name]]
                limit = httpx.get(f"{gw.url}/admin/status", headers=ADMIN).json()["limiters"]["tiny-chat"]["limit"]
                row["gateway_limit"] = limit
                results["rows"].append(row)
                d, g = row["direct"], row["gateway"]
                print(f"{clients:>3} clients  direct {d['req_s']:6.1f} req/s ttft p50 {d['ttft_p50']:6.1f} "
                      f"p95 {d['ttft_p95']:6.1f} ms | gateway {g['req_s']:6.1f} req/s ttft p50 {g['ttft_p50']:6.1f} "
                      f"p95 {g['ttft_p95']:6.1f} ms | limit {limit}", flush=True)
        if not args.skip_swap:
            for name, hold in (("fifo", "0"), ("grouped", "15")):
                with gateway(tmp, name, RAM="2", GATEWAY_HOST_RAM_GB="3.5", GATEWAY_SWAP_HOLD=hold) as gw:
                    gw.wait_ready(60)
                    uvloop.run(drive(f"{gw.base_url}/chat/completions", ["tiny-chat", "tiny-chat-b"], 2, 1.0))
                    before = loads(gw)
                    cell = uvloop.run(drive(f"{gw.base_url}/chat/completions", ["tiny-chat", "tiny-chat-b"], 8,
                                            args.seconds * 2, warmup=args.warmup))
                    count = loads(gw) - before
                    residency = httpx.get(f"{gw.url}/admin/status", headers=ADMIN).json()["residency"]
                done = cell.completed + cell.abandoned
                results["swap"][name] = {"req_s": cell.completed / cell.seconds, "loads": count,
                                         "loads_per_100": 100 * count / max(1, done), "errors": cell.errors,
                                         "turns": residency["turns"], "hold_s": residency["hold_s"]}
                print(f"swap {name}: {results['swap'][name]}", flush=True)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def table(results: dict[str, Any]) -> str:
    lines = ["| clients | direct req/s (rounds) | gateway req/s (rounds) | × | direct tok/s | gateway tok/s "
             "| direct TTFT p50 / p95 ms | gateway TTFT p50 / p95 ms | direct total p50 / p95 ms "
             "| gateway total p50 / p95 ms | limit |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def rounds(cell: dict[str, Any]) -> str:
        values = cell.get("req_s_rounds") or []
        return f" ({min(values):.0f}–{max(values):.0f})" if len(values) > 1 else ""

    for row in results["rows"]:
        d, g = row["direct"], row["gateway"]
        lines.append(
            f"| {row['clients']} | {d['req_s']:.1f}{rounds(d)} | {g['req_s']:.1f}{rounds(g)} "
            f"| {g['req_s'] / max(d['req_s'], 1e-9):.2f} "
            f"| {d['tok_s']:.0f} | {g['tok_s']:.0f} | {d['ttft_p50']:.1f} / {d['ttft_p95']:.1f} "
            f"| {g['ttft_p50']:.1f} / {g['ttft_p95']:.1f} | {d['total_p50']:.1f} / {d['total_p95']:.1f} "
            f"| {g['total_p50']:.1f} / {g['total_p95']:.1f} | {row['gateway_limit']} |")
    if results["swap"]:
        lines += ["", "| swap scenario (8 clients, 2 models that do not fit together) | req/s | model loads | "
                  "loads per 100 requests |", "|---|---:|---:|---:|"]
        for name, cell in results["swap"].items():
            lines.append(f"| {name} (hold {cell.get('hold_s', '?')} s) | {cell['req_s']:.1f} | {cell['loads']:.0f} "
                         f"| {cell['loads_per_100']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
