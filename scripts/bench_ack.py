"""Where the kernel cannot quick-ACK (macOS, Windows): is a fresh loopback connection per request cheaper than the
delayed-ACK stall a reused one pays? Measured on Linux with the real runtime, one streaming client, three ways:
quick-ACK re-armed on kept-alive connections (Linux's fix), kept-alive without it (what macOS/Windows would get),
and a fresh connection per request without it (their fallback, GATEWAY_UPSTREAM_FRESH_CONNECTIONS).

  .venv/bin/python scripts/bench_ack.py [--requests 150]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import GatewayProcess  # noqa: E402

WAYS = {"quick-ACK, kept alive (Linux)": {"GATEWAY_UPSTREAM_TCP_TUNING": "true",
                                          "GATEWAY_UPSTREAM_FRESH_CONNECTIONS": "false"},
        "no quick-ACK, kept alive": {"GATEWAY_UPSTREAM_TCP_TUNING": "false",
                                     "GATEWAY_UPSTREAM_FRESH_CONNECTIONS": "false"},
        "no quick-ACK, fresh connection (fallback)": {"GATEWAY_UPSTREAM_TCP_TUNING": "false",
                                                      "GATEWAY_UPSTREAM_FRESH_CONNECTIONS": "true"}}
BODY = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=150)
    args = parser.parse_args()
    for name, env in WAYS.items():
        with tempfile.TemporaryDirectory() as tmp, GatewayProcess(env={
                "GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": tmp, "GATEWAY_ACCESS_LOG": "false",
                "GATEWAY_REGISTRY_WATCH_INTERVAL": "0", **env}, log_path=Path(tmp) / "gw.log") as gw:
            gw.wait_ready(90)
            ttft, total = [], []
            with httpx.Client(timeout=30) as client:
                for i in range(args.requests + 10):
                    started = time.perf_counter()
                    first = 0.0
                    with client.stream("POST", f"{gw.base_url}/chat/completions", json=BODY) as r:
                        for line in r.iter_lines():
                            if not first and '"content":"' in line.replace(" ", ""):
                                first = time.perf_counter() - started
                    if i >= 10:  # the first ten warm up (load, connections)
                        ttft.append(first * 1000)
                        total.append((time.perf_counter() - started) * 1000)
            rate = len(total) / (sum(total) / 1000)
            print(f"{name:45s} TTFT p50 {statistics.median(ttft):6.1f} ms   total p50 {statistics.median(total):6.1f} "
                  f"ms   {rate:6.1f} req/s")


if __name__ == "__main__":
    main()
