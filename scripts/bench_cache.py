"""The response cache on the real runtime, and what a miss costs: `make bench-cache`.

1. Foundry Local (managed by a gateway with the repo's ``models.json``, ``tiny-chat``), the same 8 prompts
   (``temperature`` 0, ``--max-tokens``, 32 by default), each client one keep-alive connection, back to back:
   - the runtime's own answer time, direct, 1 client;
   - through the gateway, hits (after one warm pass) at 1 client: latency p50/p95;
   - misses (``Cache-Control: no-cache``: generated every time, still kept) and hits at 16 clients: req/s.
2. 32 identical streaming requests at once (a prompt not asked before): how many generations the gateway started
   (``gateway_routing_decisions_total``), what each client was told (``X-Gateway-Cache``), and whether all 32
   streams are the same answer and complete.
3. CPU per request of a miss against the cache off, same run: two gateways (``GATEWAY_CACHE=off`` and
   ``GATEWAY_CACHE=all``, so every request takes the miss path: key, recording, keeping) before the in-repo fake
   upstream, every request a new prompt (a miss, never coalesced), alternating rounds; CPU from /proc.

Every cell is bounded by time and request count. Numbers go to docs/performance.md; nothing asserts on them.

  .venv/bin/python scripts/bench_cache.py [--seconds 5] [--rounds 3] [--max-tokens 32] [--skip-runtime]
      [--modes off,all] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
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

ADMIN = {"Authorization": "Bearer admin"}
MAX_REQUESTS = 20_000
PROMPTS = [f"In one sentence, what is {thing}?" for thing in
           ("a kettle", "a river", "a violin", "a glacier", "a lighthouse", "a compass", "a library", "a comet")]
NO_CACHE = {"Cache-Control": "no-cache"}
_unique = itertools.count()


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else float("nan")


MAX_TOKENS = [32]


def chat(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": MAX_TOKENS[0], **extra}


async def drive(url: str, model: str, clients: int, seconds: float, headers: dict[str, str] | None = None,
                unique: bool = False) -> dict[str, Any]:
    """Closed loop: each client its own connection, the prompts in turn (or a new one each request)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    issued = 0

    async def client(index: int) -> None:
        nonlocal issued, errors
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=1)) as http:
            while time.monotonic() < deadline and issued < MAX_REQUESTS:
                issued += 1
                prompt = f"Request {next(_unique)}: say hi." if unique else PROMPTS[(index + issued) % len(PROMPTS)]
                began = time.perf_counter()
                response = await http.post(url, json=chat(model, prompt), headers=headers or {})
                if response.status_code != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    return {"req_s": len(latencies) / elapsed, "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95),
            "completed": len(latencies), "errors": errors}


def metric(gw: GatewayProcess, name: str, label: str = "") -> float:
    total = 0.0
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def identical_streams(gw: GatewayProcess, model: str, n: int) -> dict[str, Any]:
    body = chat(model, f"Describe the number {time.time_ns()} in a few words.", stream=True)
    before = metric(gw, "gateway_routing_decisions_total")

    async def one() -> tuple[str, str]:
        async with httpx.AsyncClient(timeout=300) as http, \
                http.stream("POST", f"{gw.base_url}/chat/completions", json=body) as response:
            text = (await response.aread()).decode()
            return response.headers.get("x-gateway-cache", ""), text

    results = await asyncio.gather(*(one() for _ in range(n)))

    def content(stream: str) -> str:
        events = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]
        return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))

    told: dict[str, int] = {}
    for header, _ in results:
        told[header] = told.get(header, 0) + 1
    return {"streams": n, "generations": metric(gw, "gateway_routing_decisions_total") - before, "told": told,
            "identical": len({content(text) for _, text in results}) == 1,
            "complete": all(text.rstrip().endswith("data: [DONE]") for _, text in results),
            "answer_chars": len(content(results[0][1]))}


def runtime_part(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir, GatewayProcess(env={
        "GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": tmpdir, "GATEWAY_ADMIN_API_KEY": "admin",
        "GATEWAY_ACCESS_LOG": "false", "GATEWAY_REGISTRY_WATCH_INTERVAL": "0", "GATEWAY_CACHE": "deterministic"},
            log_path=Path(tmpdir) / "gateway.log") as gw:
        gw.wait_ready(120)
        runtime = httpx.get(f"{gw.url}/admin/status", headers=ADMIN, timeout=10).json()["upstream"]["url"]
        for prompt in PROMPTS:  # loads the model and keeps one answer per prompt
            warm = httpx.post(f"{gw.base_url}/chat/completions", json=chat("tiny-chat", prompt), timeout=300)
            if warm.status_code != 200:
                sys.exit(f"warm-up failed: {warm.status_code} {warm.text[:300]}")
        print(f"runtime: {runtime}\ngateway: {gw.base_url}", flush=True)
        direct = f"{runtime}/catalogs/local/v1/chat/completions"
        via = f"{gw.base_url}/chat/completions"
        out = {
            "runtime_1": asyncio.run(drive(direct, "tiny-chat-generic-cpu:1", 1, seconds)),
            "hit_1": asyncio.run(drive(via, "tiny-chat", 1, seconds)),
            "miss_16": asyncio.run(drive(via, "tiny-chat", 16, seconds, NO_CACHE)),
            "hit_16": asyncio.run(drive(via, "tiny-chat", 16, seconds)),
        }
        for name, cell in out.items():
            print(f"{name}: {cell['req_s']:.1f} req/s, p50 {cell['p50_ms']:.2f} ms", flush=True)
        out["coalescing"] = asyncio.run(identical_streams(gw, "tiny-chat", 32))
        print(f"coalescing: {out['coalescing']}", flush=True)
        return out


def cpu_part(seconds: float, rounds: int, clients: int, modes: tuple[str, str] = ("off", "all")) -> dict[str, Any]:
    """CPU per request, cache off vs every request a miss, alternating rounds before one fake upstream."""
    with tempfile.TemporaryDirectory() as tmpdir, UpstreamProcess(models=["fake"]) as upstream:
        registry = write_registry(Path(tmpdir) / "models.json", [{"name": "fake", "task": "chat", "min_ram_gb": 1}])
        env = {"GATEWAY_UPSTREAM_KIND": "openai", "GATEWAY_HOST_RAM_GB": "16", "GATEWAY_ACCESS_LOG": "true",
               "GATEWAY_MODEL_CONCURRENCY": "256", "GATEWAY_ADAPTIVE_CONCURRENCY": "false"}
        upstream.configure(chunks=8)
        gateways = {}
        for name, mode in zip(("off", "all"), modes, strict=True):  # "all:0": GATEWAY_CACHE_MAX_BYTES=0
            cache, _, max_bytes = mode.partition(":")
            gateways[name] = GatewayProcess(
                upstream=upstream.url, registry=registry, log_path=Path(tmpdir) / name,
                env={**env, "GATEWAY_CACHE": cache, "GATEWAY_CACHE_MAX_BYTES": max_bytes or "67108864"}).start()
        totals = {mode: {"cpu": 0.0, "requests": 0, "req_s": []} for mode in gateways}
        try:
            for gw in gateways.values():  # warm: connections, first-request paths
                asyncio.run(drive(f"{gw.base_url}/chat/completions", "fake", clients, 1.0, unique=True))
            for round_ in range(rounds):
                order = list(gateways) if round_ % 2 == 0 else list(reversed(gateways))
                for mode in order:
                    gw = gateways[mode]
                    process = psutil.Process(gw.pid)
                    before = sum(process.cpu_times()[:2])
                    cell = asyncio.run(drive(f"{gw.base_url}/chat/completions", "fake", clients, seconds,
                                             unique=True))
                    totals[mode]["cpu"] += sum(process.cpu_times()[:2]) - before
                    totals[mode]["requests"] += cell["completed"]
                    totals[mode]["req_s"].append(cell["req_s"])
        finally:
            for gw in gateways.values():
                gw.stop()
    out = {mode: {"cpu_us_per_request": t["cpu"] / max(t["requests"], 1) * 1e6, "requests": t["requests"],
                  "req_s": statistics.median(t["req_s"])} for mode, t in totals.items()}
    out["miss_over_off"] = out["all"]["cpu_us_per_request"] / out["off"]["cpu_us_per_request"]
    print(f"cpu: {out}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the CPU A/B (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="clients in the CPU A/B (default 8)")
    parser.add_argument("--skip-runtime", action="store_true", help="only the CPU A/B (no Foundry Local)")
    parser.add_argument("--modes", default="off,all", help="GATEWAY_CACHE of the A/B's two gateways (off,off: "
                        "the noise floor; all:0 keeps nothing)")
    parser.add_argument("--max-tokens", default="32", help="answer lengths asked of the runtime, comma-separated: "
                        "one runtime part each (default 32)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every number to this file")
    args = parser.parse_args()
    results: dict[str, Any] = {"seconds": args.seconds, "runtime": {}}
    if not args.skip_runtime:
        for max_tokens in (int(n) for n in args.max_tokens.split(",")):
            MAX_TOKENS[0] = max_tokens
            results["runtime"][max_tokens] = runtime_part(args.seconds)
    a, b = args.modes.split(",")
    results["cpu"] = cpu_part(args.seconds, args.rounds, args.clients, (a, b))
    table = Table(title="the response cache")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for max_tokens, r in results["runtime"].items():
        table.add_row(f"[bold]max_tokens {max_tokens}[/]", "")
        table.add_row("runtime answer, direct, 1 client: p50 / p95 ms",
                      f"{r['runtime_1']['p50_ms']:.1f} / {r['runtime_1']['p95_ms']:.1f}")
        table.add_row("hit, 1 client: p50 / p95 ms", f"{r['hit_1']['p50_ms']:.2f} / {r['hit_1']['p95_ms']:.2f}")
        table.add_row("misses, 16 clients: req/s", f"{r['miss_16']['req_s']:.1f}")
        table.add_row("hits, 16 clients: req/s", f"{r['hit_16']['req_s']:.1f}")
        table.add_row("hits / misses at 16 clients", f"{r['hit_16']['req_s'] / max(r['miss_16']['req_s'], 1e-9):.1f}x")
        c = r["coalescing"]
        table.add_row(f"{c['streams']} identical streams: generations", f"{c['generations']:.0f}")
        table.add_row("  told (X-Gateway-Cache)", ", ".join(f"{k} {v}" for k, v in sorted(c["told"].items())))
        table.add_row("  all identical and complete", str(c["identical"] and c["complete"]))
    cpu = results["cpu"]
    table.add_row("CPU per request, cache off (us)", f"{cpu['off']['cpu_us_per_request']:.0f}")
    table.add_row("CPU per request, every request a miss (us)", f"{cpu['all']['cpu_us_per_request']:.0f}")
    table.add_row("miss / off", f"{cpu['miss_over_off']:.3f}")
    Console(width=120).print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
