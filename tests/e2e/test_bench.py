"""``foundry-gateway bench`` measures the model, never the response cache (issue 32, items 1-2): run twice with
the cache on and temperature 0, the second run reaches the model as often as the first (the upstream's request
count), every result says the cache was bypassed, and results a cache answered are refused by
``registry annotate``; ``bench --batch`` reports lines/s measured with a clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, write_registry

REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}]
PROMPTS = [{"id": f"p{i}", "task": "chat", "prompt": f"Say {i}", "reference": str(i)} for i in range(3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, UpstreamProcess, Path]]:
    folder = tmp_path_factory.mktemp("bench")
    registry = write_registry(folder / "models.json", REGISTRY)
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    with UpstreamProcess(models=["chat-a"]) as up, GatewayProcess(
            upstream=up.url, registry=registry, env={**FAKE_ENV, "GATEWAY_CACHE": "deterministic"},
            log_path=folder / "gw.log") as gw:
        gw.wait_ready()
        yield gw, up, prompts


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_second_bench_run_reaches_the_model_not_the_cache(setup: tuple[GatewayProcess, UpstreamProcess, Path],
                                                             tmp_path: Path) -> None:
    gw, up, prompts = setup
    runs = []
    for out in ("first", "second"):
        before = up.stats()["requests"]
        done = _cli("bench", "--gateway", gw.url, "--prompts", str(prompts), "--repeat", "2", "--out",
                    str(tmp_path / out), "--json")
        assert done.returncode == 0, done.stderr
        assert up.stats()["requests"] - before == 6  # every request generated: 3 prompts x 2, the second run too
        assert "Cache-Control: no-store" in done.stderr
        runs.append(json.loads(done.stdout))
    second = runs[1]
    assert {r["cache"] for r in second["results"]} == {"bypass"} and second["meta"]["cache"] == "no-store"
    assert all(r["latency_s"] and r["latency_s"] > 0.0005 for r in second["results"])


def test_annotate_refuses_results_a_cache_answered(setup: tuple[GatewayProcess, UpstreamProcess, Path],
                                                   tmp_path: Path) -> None:
    gw, _, prompts = setup
    done = _cli("bench", "--gateway", gw.url, "--prompts", str(prompts), "--repeat", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    results = next(tmp_path.glob("bench-*.json"))
    doc = json.loads(results.read_text())
    doc["results"][0]["cache"] = "hit"  # what a bench before this fix measured
    results.write_text(json.dumps(doc))
    registry = write_registry(tmp_path / "models.json", REGISTRY)
    refused = _cli("registry", "annotate", str(results), "--file", str(registry))
    assert refused.returncode == 1 and "response cache" in refused.stderr and "Traceback" not in refused.stderr
    assert "measured" not in json.loads(registry.read_text())[0]


def test_bench_batch_measures_lines_per_second_with_a_clock(setup: tuple[GatewayProcess, UpstreamProcess, Path],
                                                            tmp_path: Path) -> None:
    """It divided by whole-second timestamps: "30000000000.0 lines/s" for a batch done within one second."""
    gw, up, prompts = setup
    before = up.stats()["requests"]
    done = _cli("bench", "--batch", "--gateway", gw.url, "--model", "chat-a", "--prompts", str(prompts), "--repeat",
                "2", "--out", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)["meta"]
    assert 0 < meta["batch_lines_per_s"] < 10_000 and meta["batch_seconds"] > 0
    assert up.stats()["requests"] - before == 6  # the lines asked for no-store: none answered by the cache
