"""Memory under load: the gateway's resident set (RSS) while it takes a 300 MB upload, serves four 100 MB downloads
at once, is sent a 300 MB body to ``POST /v1/batches`` and runs a 10,000-line batch — each against a fixed bound
(default +64 MiB over the gateway's RSS just before). Bodies and files are streamed, never whole in memory; this
shows it holds.

A real gateway process in front of the in-repo fake upstream; RSS sampled every 20 ms with psutil (the gateway's
process and its children). The clients stream too (a generator body, downloads read in pieces), so the numbers
are the gateway's alone.

  .venv/bin/python scripts/bench_memory.py [--upload-mb 300] [--download-mb 100] [--lines 10000] [--bound-mb 64]
      [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.upstream import UpstreamProcess  # noqa: E402
from tests.helpers import GatewayProcess, write_registry  # noqa: E402

MIB = 1 << 20
KEY = "memory-bench-key"


class Sampler:
    """The highest RSS of a process (and its children) while a block runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def __enter__(self) -> Sampler:
        self.before = self.rss()
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _multipart(size: int, boundary: str = "benchboundary") -> tuple[Iterator[bytes], int]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\n"
            "Content-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    piece = secrets.token_bytes(MIB)

    def parts() -> Iterator[bytes]:
        yield head
        left = size
        while left > 0:
            yield piece[:min(left, MIB)]
            left -= MIB
        yield tail

    return parts(), len(head) + size + len(tail)


def post_batches(gw: GatewayProcess, size: int) -> int:
    """A body of ``size`` bytes to ``POST /v1/batches``, chunked (no length to refuse it by): its status."""
    piece = b" " * MIB

    def parts() -> Iterator[bytes]:
        yield b"{"
        for _ in range(size // MIB):
            yield piece

    try:
        return httpx.post(f"{gw.base_url}/batches", content=parts(), timeout=600,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}).status_code
    except httpx.HTTPError as exc:  # the gateway stopped reading at its limit
        return -1 if "413" not in str(exc) else 413


def upload(gw: GatewayProcess, size: int) -> str:
    parts, length = _multipart(size)
    answer = httpx.post(f"{gw.base_url}/files", content=parts, timeout=600,
                        headers={"Authorization": f"Bearer {KEY}", "Content-Length": str(length),
                                 "Content-Type": "multipart/form-data; boundary=benchboundary"})
    answer.raise_for_status()
    return str(answer.json()["id"])


async def downloads(gw: GatewayProcess, file_id: str, count: int) -> int:
    async def one(client: httpx.AsyncClient) -> int:
        got = 0
        async with client.stream("GET", f"{gw.base_url}/files/{file_id}/content",
                                 headers={"Authorization": f"Bearer {KEY}"}) as answer:
            answer.raise_for_status()
            async for chunk in answer.aiter_raw():
                got += len(chunk)
        return got

    async with httpx.AsyncClient(timeout=600) as client:
        return sum(await asyncio.gather(*(one(client) for _ in range(count))))


def batch(gw: GatewayProcess, lines: int) -> dict[str, Any]:
    body = {"model": "chat-a", "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}
    content = b"".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                                   "body": {**body, "user": str(i)}}).encode() + b"\n" for i in range(lines))
    headers = {"Authorization": f"Bearer {KEY}"}
    uploaded = httpx.post(f"{gw.base_url}/files", headers=headers, timeout=60,
                          files={"file": ("lines.jsonl", content)}, data={"purpose": "batch"}).json()
    created = httpx.post(f"{gw.base_url}/batches", headers=headers, timeout=60,
                         json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                               "completion_window": "24h"}).json()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        found = httpx.get(f"{gw.base_url}/batches/{created['id']}", headers=headers, timeout=30).json()
        if found["status"] in ("completed", "failed", "cancelled", "expired"):
            return dict(found)
        time.sleep(0.5)
    raise RuntimeError("the batch did not finish in 15 minutes")


def measure(name: str, gw: GatewayProcess, work: Callable[[], Any], bound: int) -> dict[str, Any]:
    with Sampler(gw.pid) as sampled:
        started = time.monotonic()
        outcome = work()
        seconds = time.monotonic() - started
    grew = sampled.peak - sampled.before
    row = {"scenario": name, "rss_before_mib": round(sampled.before / MIB, 1),
           "rss_peak_mib": round(sampled.peak / MIB, 1), "grew_mib": round(grew / MIB, 1),
           "bound_mib": bound // MIB, "within": grew <= bound, "seconds": round(seconds, 1), "outcome": outcome}
    print(f"{name:<34} before {row['rss_before_mib']:>7} MiB  peak {row['rss_peak_mib']:>7} MiB  "
          f"grew {row['grew_mib']:>6} MiB  (bound +{row['bound_mib']} MiB: {'ok' if row['within'] else 'OVER'})  "
          f"{row['seconds']} s", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upload-mb", type=int, default=300)
    parser.add_argument("--download-mb", type=int, default=100)
    parser.add_argument("--downloads", type=int, default=4)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--bound-mb", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    bound = args.bound_mb * MIB
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        here = Path(folder)
        registry = write_registry(here / "models.json", [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}])
        (here / "keys.json").write_text(json.dumps({"keys": [{"name": "bench", "key": KEY}]}))
        env = {"GATEWAY_UPSTREAM_KIND": "openai", "GATEWAY_HOST_RAM_GB": "16", "GATEWAY_ACCESS_LOG": "false",
               "GATEWAY_KEYS_FILE": str(here / "keys.json"), "GATEWAY_CACHE": "off",
               "GATEWAY_MAX_FILE_BYTES": str((args.upload_mb + 10) * MIB), "GATEWAY_STATE_MIN_FREE_BYTES": "0",
               "GATEWAY_STATE_DIR": str(here / "state"), "GATEWAY_ADAPTIVE_CONCURRENCY": "false",
               "GATEWAY_MODEL_CONCURRENCY": "16"}
        with UpstreamProcess(models=["chat-a"]) as up, GatewayProcess(
                upstream=up.url, registry=registry, env=env, log_path=here / "gw.log") as gw:
            gw.wait_ready()
            httpx.get(f"{gw.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
            rows = [measure(f"upload {args.upload_mb} MB", gw, lambda: upload(gw, args.upload_mb * 1_000_000), bound)]
            file_id = upload(gw, args.download_mb * 1_000_000)
            rows.append(measure(f"{args.downloads} x download {args.download_mb} MB at once", gw,
                                lambda: asyncio.run(downloads(gw, file_id, args.downloads)), bound))
            rows.append(measure(f"POST /v1/batches {args.upload_mb} MB chunked", gw,
                                lambda: post_batches(gw, args.upload_mb * 1_000_000), bound))
            rows.append(measure(f"batch of {args.lines} lines", gw,
                                lambda: {k: v for k, v in batch(gw, args.lines).items()
                                         if k in ("status", "request_counts")}, bound))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("CI", "")
    raise SystemExit(main())
