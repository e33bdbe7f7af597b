"""A batch in the capacity interactive traffic leaves, on the real runtime: `make bench-batch`.

A managed gateway with the repo's ``models.json`` (``tiny-chat``; the response cache off, so nothing is answered
twice for free) and three phases, one after the other:

1. **interactive alone**: 4 clients, each a loop of one streaming chat request (``max_tokens`` 32, a new prompt)
   then a pause (``--think``, 0.25 s: people reading), for ``--seconds``; TTFT p50/p95 (the first content event).
2. **the batch alone**: ``--lines`` (500) short prompts as one batch (``/v1/chat/completions``,
   ``--batch-tokens``, 128 by default: a few times an interactive answer); lines per second.
3. **both**: the same batch again while the same 4 clients run until it completes.
4. **a client loop instead**: the same requests sent one after the other by one client (no Batch API) beside the
   same 4 clients: what the batch's pacing is compared with.

Reported: interactive TTFT p95 with the batch / without (goal ≤ 1.2), and the batch's lines/s with the interactive
clients / without (goal ≥ 0.8). Every loop is bounded by time and count; nothing asserts on the numbers.

  .venv/bin/python scripts/bench_batch.py [--lines 500] [--seconds 20] [--think 0.25] [--json FILE]
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
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import GatewayProcess  # noqa: E402

MODEL = "tiny-chat"
CLIENTS = 4
BATCH_TOKENS = [128]
_ids = itertools.count()


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else float("nan")


async def interactive(base: str, seconds: float, think: float, until: asyncio.Event | None = None,
                      limit: int = 5000) -> list[float]:
    """4 clients streaming with pauses; TTFTs in seconds. Ends after ``seconds`` or when ``until`` is set."""
    ttfts: list[float] = []
    deadline = time.monotonic() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            while time.monotonic() < deadline and not (until and until.is_set()) and len(ttfts) < limit:
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"Question {next(_ids)}: hi"}],
                        "max_tokens": 32, "stream": True}
                began = time.perf_counter()
                async with http.stream("POST", f"{base}/chat/completions", json=body) as response:
                    first = None
                    async for line in response.aiter_lines():
                        if first is None and '"content":"' in line and '"content":""' not in line:
                            first = time.perf_counter() - began
                    if response.status_code == 200 and first is not None:
                        ttfts.append(first)
                await asyncio.sleep(think)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return ttfts


def batch_input(lines: int) -> bytes:
    return b"\n".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Batch prompt {next(_ids)}: say hi"}],
                 "max_tokens": BATCH_TOKENS[0]}}).encode() for i in range(lines))


async def run_batch(base: str, lines: int, done: asyncio.Event) -> dict[str, Any]:
    """Upload, create, and watch every 20 ms: the time from the first finished line to the last (the batch's
    own timestamps are whole seconds)."""
    async with httpx.AsyncClient(timeout=120) as http:
        uploaded = (await http.post(f"{base}/files", files={"file": ("in.jsonl", batch_input(lines))},
                                    data={"purpose": "batch"})).json()
        batch = (await http.post(f"{base}/batches", json={"input_file_id": uploaded["id"], "completion_window": "24h",
                                                           "endpoint": "/v1/chat/completions"})).json()
        deadline = time.monotonic() + 1800
        first = last = 0.0
        first_count = 0
        while batch["status"] not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            batch = (await http.get(f"{base}/batches/{batch['id']}")).json()
            finished = batch["request_counts"]["completed"] + batch["request_counts"]["failed"]
            if finished and not first:
                first, first_count = time.perf_counter(), finished
            if finished:
                last = time.perf_counter()
    done.set()
    seconds = max(last - first, 1e-9)
    counted = batch["request_counts"]["completed"] - first_count
    return {"status": batch["status"], "counts": batch["request_counts"], "seconds": round(seconds, 3),
            "lines_per_s": counted / seconds}


async def client_loop(base: str, lines: int, done: asyncio.Event) -> dict[str, Any]:
    """The same requests without the Batch API: one client sending them one after the other."""
    began = time.perf_counter()
    ok = 0
    async with httpx.AsyncClient(timeout=120) as http:
        for line in batch_input(lines).split(b"\n"):
            response = await http.post(f"{base}/chat/completions", json=json.loads(line)["body"])
            ok += response.status_code == 200
    done.set()
    seconds = time.perf_counter() - began
    return {"status": "completed", "counts": {"total": lines, "completed": ok, "failed": lines - ok},
            "seconds": round(seconds, 3), "lines_per_s": ok / seconds}


async def both(base: str, lines: int, think: float, loop: bool = False) -> tuple[dict[str, Any], list[float]]:
    done = asyncio.Event()
    work = client_loop(base, lines, done) if loop else run_batch(base, lines, done)
    result, ttfts = await asyncio.gather(work, interactive(base, 1800, think, done))
    return result, ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500, help="lines in the batch (default 500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="interactive-alone phase (default 20 s)")
    parser.add_argument("--think", type=float, default=0.25, help="each interactive client's pause (default 0.25 s)")
    parser.add_argument("--batch-tokens", type=int, default=128, help="max_tokens of each batch line (default 128)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every number to this file")
    args = parser.parse_args()
    BATCH_TOKENS[0] = args.batch_tokens
    with tempfile.TemporaryDirectory() as tmpdir, GatewayProcess(env={
        "GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": tmpdir, "GATEWAY_ACCESS_LOG": "false",
        "GATEWAY_REGISTRY_WATCH_INTERVAL": "0", "GATEWAY_CACHE": "off"}, log_path=Path(tmpdir) / "gateway.log") as gw:
        gw.wait_ready(120)
        warm = httpx.post(f"{gw.base_url}/chat/completions", timeout=300,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
        if warm.status_code != 200:
            sys.exit(f"warm-up failed: {warm.status_code} {warm.text[:300]}")
        alone = asyncio.run(interactive(gw.base_url, args.seconds, args.think))
        print(f"interactive alone: {len(alone)} requests, TTFT p95 {pct(alone, 95):.1f} ms", flush=True)
        batch_alone = asyncio.run(run_batch(gw.base_url, args.lines, asyncio.Event()))
        print(f"batch alone: {batch_alone}", flush=True)
        mixed_batch, mixed = asyncio.run(both(gw.base_url, args.lines, args.think))
        print(f"both: batch {mixed_batch}; interactive {len(mixed)} requests, TTFT p95 {pct(mixed, 95):.1f} ms",
              flush=True)
        looped, beside_loop = asyncio.run(both(gw.base_url, args.lines, args.think, loop=True))
        print(f"a client loop instead: {looped}; interactive TTFT p95 {pct(beside_loop, 95):.1f} ms", flush=True)
    results = {
        "lines": args.lines, "think_s": args.think, "clients": CLIENTS,
        "interactive_alone": {"requests": len(alone), "ttft_p50_ms": pct(alone, 50), "ttft_p95_ms": pct(alone, 95)},
        "interactive_with_batch": {"requests": len(mixed), "ttft_p50_ms": pct(mixed, 50),
                                   "ttft_p95_ms": pct(mixed, 95)},
        "batch_alone": batch_alone, "batch_with_interactive": mixed_batch,
        "client_loop_with_interactive": looped,
        "interactive_with_client_loop": {"requests": len(beside_loop), "ttft_p50_ms": pct(beside_loop, 50),
                                         "ttft_p95_ms": pct(beside_loop, 95)},
    }
    results["ttft_p95_ratio"] = results["interactive_with_batch"]["ttft_p95_ms"] / \
        results["interactive_alone"]["ttft_p95_ms"]
    results["batch_throughput_ratio"] = mixed_batch["lines_per_s"] / max(batch_alone["lines_per_s"], 1e-9)
    table = Table(title=f"a {args.lines}-line batch and {CLIENTS} interactive clients (pause {args.think:g} s)")
    for column in ("", "interactive TTFT p50 / p95 ms", "batch lines/s", "batch status"):
        table.add_column(column, justify="left" if not column else "right")
    ia, ib = results["interactive_alone"], results["interactive_with_batch"]
    table.add_row("interactive alone", f"{ia['ttft_p50_ms']:.1f} / {ia['ttft_p95_ms']:.1f}", "–", "–")
    table.add_row("batch alone", "–", f"{batch_alone['lines_per_s']:.1f}", batch_alone["status"])
    table.add_row("both", f"{ib['ttft_p50_ms']:.1f} / {ib['ttft_p95_ms']:.1f}", f"{mixed_batch['lines_per_s']:.1f}",
                  mixed_batch["status"])
    il = results["interactive_with_client_loop"]
    table.add_row("a client loop instead of the batch", f"{il['ttft_p50_ms']:.1f} / {il['ttft_p95_ms']:.1f}",
                  f"{looped['lines_per_s']:.1f}", "")
    table.add_row("ratio (goal)", f"p95 × {results['ttft_p95_ratio']:.2f} (≤ 1.2)",
                  f"× {results['batch_throughput_ratio']:.2f} (≥ 0.8)", "")
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
