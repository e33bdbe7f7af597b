"""Render docs/ui.png: the console (/ui) in headless Chromium after a minute of mixed traffic against the in-repo
fake upstream (Foundry Local mode, three models, one pinned).

  .venv/bin/python scripts/screenshot_ui.py [--out docs/ui.png] [--seconds 40]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.upstream import UpstreamProcess  # noqa: E402
from tests.helpers import GatewayProcess, write_registry  # noqa: E402

REGISTRY = [
    {"name": "phi-4-mini", "task": "chat", "min_ram_gb": 4, "capabilities": ["chat", "tools"],
     "measured": {"ttft_ms": {"p50": 180.0}, "tokens_per_s": 21.4, "rating": {"mean": 4.2, "n": 30}}},
    {"name": "qwen2.5-coder-1.5b", "task": "code", "min_ram_gb": 2, "pinned": True},
    {"name": "tiny-embed", "task": "embeddings", "min_ram_gb": 0.5},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui.png")
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    models = ["phi-4-mini-generic-cpu:1", "qwen2.5-coder-1.5b-generic-cpu:1", "tiny-embed-generic-cpu:1"]
    with tempfile.TemporaryDirectory() as tmp, UpstreamProcess(models=models, foundry=True) as up:
        up.configure(chunks=8, chunk_delay_ms=15, ttft_ms=60)
        registry = write_registry(Path(tmp) / "models.json", REGISTRY)
        env = {"GATEWAY_UPSTREAM_KIND": "foundry", "GATEWAY_HOST_RAM_GB": "16", "GATEWAY_ADMIN_API_KEY": "admin",
               "GATEWAY_ACCESS_LOG": "false"}
        with GatewayProcess(upstream=up.url, registry=registry, env=env, log_path=Path(tmp) / "gw.log") as gw:
            gw.wait_ready()
            stop = time.monotonic() + args.seconds
            with httpx.Client(timeout=30) as client:
                while time.monotonic() < stop:
                    task = random.choice(["chat", "chat", "code"])
                    client.post(f"{gw.base_url}/chat/completions", headers={"X-Task": task},
                                json={"messages": [{"role": "user", "content": "hi"}], "stream": True,
                                      "max_tokens": 16})
                    time.sleep(random.uniform(0.05, 0.4))  # a paced load generator, not synchronisation
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{gw.url}/ui")
                page.wait_for_function("document.querySelectorAll('#decisions tbody tr').length > 0")
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
