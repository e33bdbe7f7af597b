"""The foundry-gateway command, run as users run it (a subprocess), against the in-repo test upstream."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from app.curation.bench import COLUMNS
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, require_module, run_in_terminal


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
    lines = table.stdout.splitlines()  # a pipe: a header and one tab-separated line a model
    assert lines[0].split("\t")[:3] == ["model", "tasks", "can"] and lines[1].split("\t")[0] == "chat-big"
    assert "15.0 GiB budget" in table.stderr
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
    assert entries[0] == {"name": "phi-4-mini", "task": "chat", "min_ram_gb": 8, "notes": "seed"}
    assert entries[1] == {"name": "coder", "task": "code", "min_ram_gb": 6, "aliases": ["c"]}
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
    # issue 32, item 8: one line — the runtime's own C++ retry lines go to its log, not the terminal
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and result.stdout == ""
    assert "[warning]" not in result.stderr and "http_client" in (tmp_path / "runtime-cli.log").read_text()
    shown = run_in_terminal(["pull", "phi-4-mini"], env={"GATEWAY_FOUNDRY_CACHE_DIR": str(tmp_path)})
    assert "[warning]" not in shown and "[error]" not in shown and "error: 'phi-4-mini'" in shown


def test_bench_writes_csv_json_and_png(gateway: GatewayProcess, tmp_path: Path) -> None:
    result = cli("bench", "--gateway", gateway.url, "--repeat", "2", "--out", str(tmp_path), "--plot")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("model\trequests\terrors") and "chat-a" in result.stdout
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


# --- a CLI that works in a pipe (issue 23) ---------------------------------------------------------------------

LONG = "a-model-with-a-name-much-longer-than-any-terminal-column-would-show-whole-v2"


def test_tables_in_a_pipe_are_whole_tab_separated_lines(tmp_path: Path) -> None:
    registry = tmp_path / "models.json"
    registry.write_text(json.dumps([{"name": LONG, "task": "chat", "min_ram_gb": 1, "notes": "[bold]not markup[/]"}]))
    shown = cli("models", "--registry", str(registry), "--wide", env={"COLUMNS": "40"})
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()
    assert row.split("\t")[0] == LONG and row.split("\t")[-1] == "[bold]not markup[/]"
    assert len(row.split("\t")) == len(header.split("\t"))


def test_user_text_is_never_markup_and_errors_are_one_line(tmp_path: Path) -> None:
    for args in (("select", "--model", "a[/b]"), ("select", "--model", "[red]x[/red]", "--registry", "models.json")):
        result = cli(*args)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1 and args[2] in result.stderr, result.stderr


def test_a_gateway_that_does_not_answer_is_one_line_exit_1() -> None:
    for url in ("http://127.0.0.1:1", "127.0.0.1:1"):  # a URL without a scheme is http://
        for command in (("status",), ("models",), ("select", "--task", "chat")):
            result = cli(*command, "--gateway", url)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert result.stderr == "error: no gateway answers at http://127.0.0.1:1 (is `foundry-gateway serve` " \
                                    "running there?)\n"


def test_commands_send_the_api_key(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> None:
    env = {"GATEWAY_UPSTREAM_KIND": "openai", "GATEWAY_HOST_RAM_GB": "16", "GATEWAY_API_KEYS": "the-team-key"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "g.log") as gw:
        gw.wait_ready()
        address = gw.url.removeprefix("http://")
        refused = cli("status", "--gateway", address)
        assert refused.returncode == 1 and "401" in refused.stderr and "--api-key" in refused.stderr
        assert cli("status", "--gateway", address, "--api-key", "the-team-key").returncode == 0
        keyed = {"GATEWAY_API_KEY": "the-team-key"}
        assert json.loads(cli("models", "--gateway", address, "--json", env=keyed).stdout)["models"]
        assert json.loads(cli("select", "--gateway", address, "--json", env=keyed).stdout)["model"] == "chat-a"


def test_registry_add_keeps_comments_layout_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    original = ('[\n  {"name": "a", "task": "chat", "min_ram_gb": 8, "x-owner": "team a",\n'
                '   "notes": "hand-written"},\n'
                '  {"_comment": "b is ours", "name": "b", "task": "code", "min_ram_gb": 2}\n]\n')
    path.write_text(original)
    added = cli("registry", "add", "c", "--task", "chat", "--min-ram-gb", "4", "--file", str(path), "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["models"] == 3
    text = path.read_text()
    assert text.startswith(original[:original.rindex("}") + 1])  # every byte before stays
    assert text.endswith(',\n  {"name": "c", "task": "chat", "min_ram_gb": 4}\n]\n')


def test_registry_validate_reports_every_problem_in_one_pass(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"name": "a", "task": "chat", "min_ram_gb": -1},
                                {"name": "b", "task": "chat", "min_ram_gb": 1, "path": "models/nowhere"},
                                {"name": "c", "task": "chat", "min_ram_gb": 1, "path": "."}]))
    result = cli("registry", "validate", str(path), "--json")
    assert result.returncode == 1
    problems = json.loads(result.stdout)["problems"]
    assert len(problems) == 3, problems
    assert any("min_ram_gb" in p for p in problems) and any("models/nowhere does not exist" in p for p in problems)
    assert any("no genai_config.json" in p for p in problems)


def test_keys_add_refuses_models_the_registry_does_not_have(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    refused = cli("keys", "add", "team", "--models", "tiny-chat", "tiny-chatt", "--file", str(keys))
    assert refused.returncode == 1 and "not in the registry: tiny-chatt" in refused.stderr
    assert not keys.exists()
    ok = cli("keys", "add", "team", "--models", "tiny-chat", "--file", str(keys), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["key"].startswith("fgw-")


def test_every_command_that_prints_a_result_has_json() -> None:
    from app.cli.main import build_parser

    parser = build_parser()
    missing = []
    for name, sub in _commands(parser):
        if name in ("serve", "settings --markdown"):
            continue
        if not any("--json" in action.option_strings for action in sub._actions):
            missing.append(name)
    assert not missing, missing


def _commands(parser: Any, prefix: str = "") -> list[tuple[str, Any]]:
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix}{name} ")
                found += nested or [(f"{prefix}{name}".strip(), sub)]
    return found


# --- rough edges a newcomer met (issue 32, item 8) ---------------------------------------------------------------


def test_a_wrong_flag_shows_the_subcommands_usage_and_a_guess() -> None:
    wrong = cli("models", "--tsak", "chat")
    assert wrong.returncode == 2
    assert "usage: foundry-gateway models" in wrong.stderr and "did you mean --task?" in wrong.stderr
    assert "COMMAND" not in wrong.stderr  # not the top level's usage
    nested = cli("registry", "add", "x", "--task", "chat", "--min-ram-gb", "1", "--cpabilities", "chat")
    assert "foundry-gateway registry add" in nested.stderr and "did you mean --capabilities?" in nested.stderr
    typo = cli("modles")
    assert typo.returncode == 2 and "did you mean 'models'?" in typo.stderr
    early = cli("--json", "models")  # the review of issue 32: an option of the command, given before it
    assert early.returncode == 2 and "--json goes after the command: foundry-gateway models --json" in early.stderr


def test_tables_at_80_columns_never_cut_a_word() -> None:
    shown = run_in_terminal(["models", "--registry", str(ROOT / "models.json")], env={"GATEWAY_HOST_RAM_GB": "16"})
    lines = shown.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    table = [line for line in lines if line.startswith("│")]
    for name in ("phi-4-mini", "qwen2.5-7b-instruct", "deepseek-r1-distill-qwen-7b", "tiny-embed"):
        assert any(f"│ {name} " in line for line in table), name
    assert "not shown at 80 columns" in shown


def test_status_counts_failures_not_clients_that_left(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    """It said "errors up to 100.0% (every request)" when nothing had failed: a client that left counted as one."""
    for _ in range(2):
        assert httpx.post(f"{gateway.base_url}/chat/completions", timeout=30,
                          json={"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    upstream.fault("slow_first_byte", count=1, seconds=3)
    with contextlib.suppress(httpx.TimeoutException):  # this client leaves before its answer
        httpx.post(f"{gateway.base_url}/chat/completions", timeout=0.3,
                   json={"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]})
    said = cli("status", "--gateway", gateway.url)
    assert said.returncode == 0, said.stderr
    line = next(line for line in said.stdout.splitlines() if line.startswith("last minute:"))
    assert "none failed" in line and "%" not in line and "you see every request" in line


def test_registry_add_takes_capabilities_pinned_and_tool_call_parsing(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text("[]\n")
    folder = tmp_path / "coder"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{}")
    done = cli("registry", "add", "coder", "--task", "code", "--min-ram-gb", "2", "--capabilities", "chat,tools",
               "--pinned", "--parse-tool-calls", "--path", str(folder), "--file", str(path), "--json")
    assert done.returncode == 0, done.stderr
    entry = json.loads(path.read_text())[0]
    assert entry["capabilities"] == ["chat", "tools"] and entry["pinned"] is True and entry["parse_tool_calls"] is True


def test_keys_add_without_a_keys_file_starts_one_and_says_how(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_KEYS_FILE"}
    env.update(GATEWAY_ENV_FILE="/nonexistent", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "app.cli", "keys", "add", "team-a"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "GATEWAY_KEYS_FILE=config/keys.yaml" in done.stderr and done.stdout.startswith("fgw-")
    assert (tmp_path / "config" / "keys.yaml").is_file()
    listed = subprocess.run([sys.executable, "-m", "app.cli", "keys", "ls"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    # the review of issue 32: ls and rm then find the file add started, and say again how the gateway reads it
    assert listed.returncode == 0 and "team-a" in listed.stdout, listed.stderr
    assert "GATEWAY_KEYS_FILE=config/keys.yaml" in listed.stderr
    (tmp_path / "config" / "keys.yaml").unlink()
    listed = subprocess.run([sys.executable, "-m", "app.cli", "keys", "ls"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1 and "keys add NAME" in listed.stderr


def test_the_serve_banner_says_what_is_on(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "gw.log"
    with GatewayProcess(upstream=upstream.url, registry=registry_file, log_path=log,
                        env={"GATEWAY_UPSTREAM_KIND": "openai", "GATEWAY_API_KEYS": "k-one-secret"}):
        banner = log.read_text().splitlines()[0]
    assert "keys: 1 API key;" in banner and "cache: deterministic (this process)" in banner
    assert "tracing: off" in banner


def test_a_port_that_is_taken_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    """docs/troubleshooting.md, "port taken": uvicorn said it after the runtime had started, among log lines."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = cli("serve", "--port", str(port), "--upstream", "http://127.0.0.1:1",
                   env={"GATEWAY_STATE_DIR": str(tmp_path)}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (f"error: port {port} on 127.0.0.1 is taken (another gateway, or another "
                                            "program, listens there): pass --port N or set GATEWAY_PORT")
