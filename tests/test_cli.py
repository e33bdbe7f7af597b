"""The foundry-gateway command, run as users run it (a subprocess), against the in-repo test upstream."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from app.curation.bench import COLUMNS
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, require_module


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "COLUMNS": "160", **(env or {})}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=full_env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_help_reads_well() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("serve", "models", "select", "registry", "pull", "bench", "settings"):
        assert command in result.stdout
    assert cli("bench", "--help").stdout.count("--") >= 10


def test_models_table_and_json(registry_file: Path) -> None:
    env = {"GATEWAY_HOST_RAM_GB": "16"}
    table = cli("models", "--registry", str(registry_file), env=env)
    assert table.returncode == 0, table.stderr
    assert "chat-big" in table.stdout and "15.0 GiB budget" in table.stdout
    data = json.loads(cli("models", "--registry", str(registry_file), "--json", "--task", "chat", env=env).stdout)
    assert [m["id"] for m in data["models"]] == ["chat-big", "chat-a", "chat-b"]
    assert data["models"][0]["fits"] is False and data["host"]["budget_gb"] == 15


def test_models_against_a_running_gateway(gateway: GatewayProcess) -> None:
    data = json.loads(cli("models", "--gateway", gateway.url, "--json").stdout)
    rows = {m["id"]: m for m in data["models"]}
    assert rows["ghost"]["available"] is False and rows["chat-a"]["available"] is True


def test_select_matches_the_route_endpoint(gateway: GatewayProcess, registry_file: Path,
                                            upstream: UpstreamProcess) -> None:
    env = {"GATEWAY_HOST_RAM_GB": "16", "GATEWAY_UPSTREAM_KIND": "openai"}
    local = json.loads(cli("select", "--task", "code", "--json", "--registry", str(registry_file),
                           "--upstream", upstream.url, env=env).stdout)
    served = httpx.get(f"{gateway.base_url}/route", params={"task": "code"}).json()
    assert local["model"] == served["model"] == "code-a"
    assert local["candidates"] == served["candidates"]
    text = cli("select", "--task", "code", "--registry", str(registry_file), "--upstream", upstream.url, env=env)
    assert "code-a" in text.stdout and "not available on the upstream" in text.stdout
    unknown = cli("select", "--task", "poetry", "--registry", str(registry_file), env=env)
    assert unknown.returncode == 1 and "Unknown task 'poetry'" in unknown.stderr


def test_registry_validate_ok_and_precise_errors(tmp_path: Path) -> None:
    assert cli("registry", "validate").returncode == 0
    bad = tmp_path / "models.json"
    bad.write_text(json.dumps([{"name": "phi-4-mini", "task": "chat", "min_ram_gb": 8},
                               {"name": "qwen2.5-7b-instruct", "task": "chat", "min_ram_gb": -16}]))
    result = cli("registry", "validate", str(bad))
    assert result.returncode == 1
    assert 'models.json: entry 2 ("qwen2.5-7b-instruct"): min_ram_gb must be a number ≥ 0' in result.stderr
    as_json = json.loads(cli("registry", "validate", str(bad), "--json").stdout)
    assert as_json["valid"] is False and len(as_json["problems"]) == 1


def test_registry_add_validates_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"name": "phi-4-mini", "task": "chat", "min_ram_gb": 8, "notes": "seed"}]))
    ok = cli("registry", "add", "coder", "--task", "code", "--min-ram-gb", "6", "--alias", "c", "--file", str(path))
    assert ok.returncode == 0, ok.stderr
    entries = json.loads(path.read_text())
    assert entries[0] == {"name": "phi-4-mini", "task": "chat", "min_ram_gb": 8.0, "notes": "seed"}
    assert entries[1] == {"name": "coder", "task": "code", "min_ram_gb": 6.0, "aliases": ["c"]}
    dup = cli("registry", "add", "coder", "--task", "code", "--min-ram-gb", "1", "--file", str(path))
    assert dup.returncode == 1 and "already used by entry 2" in dup.stderr
    assert len(json.loads(path.read_text())) == 2  # nothing written on error


def test_settings_markdown_lists_every_setting() -> None:
    from app.core.settings import Settings

    out = cli("settings", "--markdown").stdout
    assert all(f"GATEWAY_{name.upper()}" in out for name in Settings.model_fields)


def test_pull_offline_says_so_clearly(tmp_path: Path) -> None:
    require_module("foundry_local_sdk")
    result = cli("pull", "phi-4-mini", env={"GATEWAY_FOUNDRY_CACHE_DIR": str(tmp_path), "CI": "true"})
    assert result.returncode == 1
    assert "catalog" in result.stderr and "not reachable" in result.stderr


def test_bench_writes_csv_json_and_png(gateway: GatewayProcess, tmp_path: Path) -> None:
    result = cli("bench", "--gateway", gateway.url, "--repeat", "2", "--out", str(tmp_path), "--plot")
    assert result.returncode == 0, result.stderr
    assert "bench summary" in result.stdout and "chat-a" in result.stdout
    csv_file = next(tmp_path.glob("bench-*.csv"))
    rows = list(csv.DictReader(csv_file.open()))
    assert tuple(rows[0]) == COLUMNS
    assert {r["model"] for r in rows} == {"chat-a", "chat-b", "code-a"}  # fits and available
    assert all(r["status"] == "ok" and float(r["latency_s"]) > 0 and float(r["ttft_s"]) >= 0 for r in rows)
    assert all(r["fluency"] == r["relevance"] == r["correctness"] == "" for r in rows)
    doc = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    assert len(doc["results"]) == len(rows) and {s["model"] for s in doc["summary"]} == {"chat-a", "chat-b", "code-a"}
    png = next(tmp_path.glob("bench-*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_json_direct_and_rate(gateway: GatewayProcess, upstream: UpstreamProcess, tmp_path: Path) -> None:
    out = cli("bench", "--gateway", gateway.url, "--model", "code-a", "--repeat", "1", "--out", str(tmp_path),
              "--json", "--direct", "--upstream", f"{upstream.url}/v1")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["meta"]["target"] == "direct" and {r["model"] for r in doc["results"]} == {"code-a"}
    assert all(r["completion_tokens"] > 0 for r in doc["results"])
    path = next(tmp_path.glob("bench-*.json"))
    answers = "5\n4\n3\n" + "x\n2\n\n\n" + "q\n"
    rated = cli("bench", "--rate", str(path), stdin=answers)
    assert rated.returncode == 0, rated.stderr
    results = json.loads(path.read_text())["results"]
    assert (results[0]["fluency"], results[0]["relevance"], results[0]["correctness"]) == (5, 4, 3)
    assert results[1]["fluency"] == 2 and results[1]["relevance"] == ""
    assert next(csv.DictReader(path.with_suffix(".csv").open()))["fluency"] == "5"


def test_bench_unreachable_gateway_is_exit_1() -> None:
    result = cli("bench", "--gateway", "http://127.0.0.1:9", "--repeat", "1")
    assert result.returncode == 1 and "cannot list models" in result.stderr
