"""Bench results flowing back into models.json (core.registry_file, curation.records) and routing by them
(rank_by, X-Latency-Budget-Ms in policy.routing): pure tests; the real-runtime loop is in test_foundry_curation.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import GatewayError
from app.core.registry import RegistryError, build_registry
from app.core.registry_file import RegistryChanged, annotate
from app.curation.records import ratings, records, reference_score
from app.policy.routing import choose, latency_budget

ORIGINAL = """[
  {"name": "alpha", "task": "chat", "min_ram_gb": 1, "x-owner": "team-a",
   "notes": "first"},
  {"_comment": "kept as written", "name": "beta",   "task": ["chat", "code"], "min_ram_gb": 2},
  {"min_ram_gb": 3, "task": "code", "name": "gamma", "measured": {"latency_ms": {"p50": 9}, "x-extra": 1}}
]
"""


def test_annotate_touches_only_the_named_entries(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(ORIGINAL)
    assert annotate(path, {"alpha": {"rating": {"mean": 4.5, "n": 2}}, "gamma": {"latency_ms": {"p50": 7}}}) == \
        ["alpha", "gamma"]
    text = path.read_text()
    lines, before = text.splitlines(), ORIGINAL.splitlines()
    assert lines[:3] == [*before[:2], '   "notes": "first",']
    assert lines[3] == '   "measured": {"rating": {"mean": 4.5, "n": 2}}},'  # added last, laid out like the rest
    assert lines[4] == before[3] and lines[6:] == before[5:]  # beta, byte for byte
    entries = json.loads(text)
    assert list(entries[0]) == ["name", "task", "min_ram_gb", "x-owner", "notes", "measured"]  # order kept
    assert list(entries[2]) == ["min_ram_gb", "task", "name", "measured"]  # replaced in place
    assert entries[2]["measured"] == {"latency_ms": {"p50": 7}, "x-extra": 1}  # merged: the hand-added part stays
    build_registry(entries)


def test_a_file_changed_meanwhile_is_not_clobbered(tmp_path: Path) -> None:
    class Racing(type(Path())):  # type: ignore[misc]
        reads = 0

        def read_bytes(self) -> bytes:
            data = super().read_bytes()
            Racing.reads += 1
            if Racing.reads == 1:  # someone saves their edit right after we read the file
                Path(self).write_text(ORIGINAL.replace('"first"', '"edited by a person"'))
            return data

    path = tmp_path / "models.json"
    path.write_text(ORIGINAL)
    with pytest.raises(RegistryChanged):
        annotate(Racing(path), {"alpha": {"rating": {"mean": 1, "n": 1}}})
    assert '"edited by a person"' in path.read_text() and "measured" not in path.read_text().split("gamma")[0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_result_that_would_not_load_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(ORIGINAL)
    with pytest.raises(RegistryError, match=r"measured latency_ms\.p95 must be a number"):
        annotate(path, {"beta": {"latency_ms": {"p95": "slow"}}})
    assert path.read_text() == ORIGINAL


def test_wrapped_layout_symlink_and_mode_are_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text('{"models": [{"name": "a", "task": "chat", "min_ram_gb": 1}], "x-team": "ops"}')
    real.chmod(0o640)
    link = tmp_path / "models.json"
    link.symlink_to(real)
    assert annotate(link, {"a": {"tokens_per_s": 9}}) == ["a"]
    assert link.is_symlink() and json.loads(real.read_text())["models"][0]["measured"] == {"tokens_per_s": 9}
    assert (real.stat().st_mode & 0o777) == 0o640 and not list(tmp_path.glob(".*.tmp"))


def test_values_the_gateway_could_not_read_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(ORIGINAL)
    with pytest.raises(ValueError):
        annotate(path, {"alpha": {"ram_gb": float("nan")}})
    assert path.read_text() == ORIGINAL


# --- records from bench results --------------------------------------------------------------------------------


def row(model: str, task: str, scores: tuple[Any, Any, Any], output: str = "x", reference: str = "") -> dict[str, Any]:
    return {"model": model, "task": task, "status": "ok", "output": output, "reference": reference,
            "fluency": scores[0], "relevance": scores[1], "correctness": scores[2]}


def test_ratings_per_criterion_and_task() -> None:
    rated = ratings([row("m", "chat", (5, 4, 3)), row("m", "code", (1, "", 1)), row("m", "chat", ("", "", ""))])
    assert rated == {"mean": 2.8, "n": 5, "fluency": {"mean": 3.0, "n": 2}, "relevance": {"mean": 4.0, "n": 1},
                     "correctness": {"mean": 2.0, "n": 2},
                     "by_task": {"chat": {"mean": 4.0, "n": 3}, "code": {"mean": 1.0, "n": 2}}}
    assert ratings([row("m", "chat", ("", "", ""))]) is None


def test_reference_score_is_rouge_l_and_contains() -> None:
    scored = reference_score([row("m", "chat", ("", "", ""), "The capital is Paris.", "Paris"),
                              row("m", "chat", ("", "", ""), "Lyon", "Paris")])
    assert scored is not None and scored["n"] == 2 and scored["contains"] == 0.5
    assert scored["mean"] == pytest.approx((2 * 0.25 / 1.25 + 0) / 2, abs=1e-3)  # ROUGE-L F1 of 1/4 and 0


def test_ratings_read_as_csv_writes_them_and_ignore_nonsense() -> None:
    rated = ratings([row("m", "chat", ("4", True, 9)), row("m", "chat", (-1, "x", 2))])
    assert rated is not None and rated["mean"] == 3.0 and rated["n"] == 2


def test_records_carry_timings_prompt_set_and_host() -> None:
    doc = {"meta": {"started": "2026-11-25T19:00:00+00:00", "prompt_set": {"sha256": "abc", "prompts": 2},
                    "host_summary": {"cores": 2}, "ram_gb": {"m": 0.02}},
           "summary": [{"model": "m", "requests": 2, "errors": 0, "latency_p50_s": 0.0412, "latency_p95_s": 0.05,
                        "ttft_p50_s": 0.004, "ttft_p95_s": None, "tokens_per_s_mean": 1200.0}],
           "results": [row("m", "chat", (4, 4, 4))]}
    record = records(doc)["m"]
    assert record["latency_ms"] == {"p50": 41.2, "p95": 50.0} and record["ttft_ms"] == {"p50": 4.0}
    assert record["ram_gb"] == 0.02 and record["prompt_set"]["sha256"] == "abc" and record["host"] == {"cores": 2}
    assert record["rating"]["mean"] == 4.0 and record["date"].startswith("2026-11-25")


# --- routing by what was measured ------------------------------------------------------------------------------


def measured_registry() -> Any:
    return build_registry([
        {"name": "first", "task": "chat", "min_ram_gb": 1},  # never benchmarked
        {"name": "slow-good", "task": "chat", "min_ram_gb": 1, "measured": {
            "latency_ms": {"p50": 900, "p95": 1200}, "rating": {"mean": 4.3, "n": 30}}},
        {"name": "fast-ok", "task": "chat", "min_ram_gb": 1, "measured": {
            "latency_ms": {"p50": 90, "p95": 150}, "rating": {"mean": 3.1, "n": 30,
                                                              "by_task": {"chat": {"mean": 4.8, "n": 10}}}}},
    ])


def route(rank_by: str, budget: float | None = None, model: str | None = None) -> Any:
    return choose(measured_registry(), model=model, task="chat", default_task="chat", budget_gb=8, rank_by=rank_by,
                  latency_budget_ms=budget)


def test_order_ignores_measurements() -> None:
    assert route("order").model.name == "first"


def test_rating_prefers_the_task_rating_then_unrated_last() -> None:
    chosen = route("rating")
    assert [chosen.model.name, *(e.name for e in chosen.fallbacks)] == ["fast-ok", "slow-good", "first"]
    assert chosen.explanation.startswith("rating 4.8 (n=10) for chat")
    reasons = {v.model: v.reason for v in chosen.verdicts}
    assert reasons["slow-good"].endswith("rating 4.3 (n=30) for chat") and reasons["first"].endswith("not rated")
    assert [v.model for v in chosen.verdicts] == ["first", "slow-good", "fast-ok"]  # listed in registry order


def test_a_model_rated_on_another_task_is_not_rated_for_this_one() -> None:
    registry = build_registry([
        {"name": "chat-rated", "task": ["chat", "code"], "min_ram_gb": 1,
         "measured": {"rating": {"mean": 3.0, "n": 60, "by_task": {"chat": {"mean": 3.0, "n": 60}}}}},
        {"name": "code-rated", "task": ["chat", "code"], "min_ram_gb": 1,
         "measured": {"rating": {"mean": 5.0, "n": 3, "by_task": {"code": {"mean": 5.0, "n": 3}}}}},
    ])
    chosen = choose(registry, model=None, task="chat", default_task="chat", budget_gb=8, rank_by="rating")
    assert chosen.model.name == "chat-rated"
    assert next(v for v in chosen.verdicts if v.model == "code-rated").reason.endswith("not rated")


def test_latency_ranks_by_measured_p50() -> None:
    chosen = route("latency")
    assert chosen.model.name == "fast-ok" and chosen.explanation.startswith("latency p50 90 ms")


def test_latency_budget_skips_slow_models_and_says_why() -> None:
    chosen = route("rating", budget=800)
    assert [chosen.model.name, *(e.name for e in chosen.fallbacks)] == ["fast-ok", "first"]  # unmeasured: kept
    skipped = next(v for v in chosen.verdicts if v.model == "slow-good")
    assert skipped.decision == "skipped" and skipped.reason == "p95 1,200 ms > budget 800"
    assert route("order", budget=800, model="slow-good").model.name == "slow-good"  # pinned: the caller's choice


def test_latency_budget_header_values() -> None:
    assert latency_budget(" 800 ") == 800
    for bad in ("0", "-5", "fast", "nan", "1e12"):
        with pytest.raises(GatewayError):
            latency_budget(bad)


def test_registry_annotate_command(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    registry = tmp_path / "models.json"
    registry.write_text(ORIGINAL)
    results = tmp_path / "bench.json"
    doc = {"meta": {"started": "2026-11-25T19:00:00+00:00"}, "results": [],
           "summary": [{"model": "beta", "requests": 1, "errors": 0, "latency_p50_s": 0.1, "latency_p95_s": 0.2},
                       {"model": "nobody", "requests": 1}]}
    results.write_text(json.dumps(doc))
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent"}
    # the review of issue 32: a results file from before the bench bypassed the response cache is refused
    old = subprocess.run([sys.executable, "-m", "app.cli", "registry", "annotate", str(results), "--file",
                          str(registry)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert old.returncode == 1 and "did not bypass the response cache" in old.stderr, old.stderr
    assert registry.read_text() == ORIGINAL
    doc["meta"]["cache"] = "no-store"
    results.write_text(json.dumps(doc))
    done = subprocess.run([sys.executable, "-m", "app.cli", "registry", "annotate", str(results), "--file",
                           str(registry)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "written to" in done.stderr and "beta" in done.stderr and "not in that file: nobody" in done.stderr
    beta = json.loads(registry.read_text())[1]
    assert beta["_comment"] == "kept as written" and beta["measured"]["latency_ms"] == {"p50": 100.0, "p95": 200.0}
    bad = subprocess.run([sys.executable, "-m", "app.cli", "registry", "annotate", str(registry), "--file",
                          str(registry)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not a `foundry-gateway bench` results file" in bad.stderr


def test_the_builder_make_builder_installs_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 32, item 3: the builder's venv was looked for in app/ (``ROOT`` was the package), so compile only
    worked with --python."""
    from app.curation import compile as compiling

    monkeypatch.delenv("FOUNDRY_GATEWAY_BUILDER_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    checkout = compiling.CHECKOUT / ".venv-model" / "bin" / "python"
    if checkout.exists():
        assert compiling.builder_python() == str(checkout)
    here = tmp_path / ".venv-model" / "bin" / "python"
    here.parent.mkdir(parents=True)
    here.write_text("")
    assert compiling.builder_python() == str(here)  # the one where the command runs comes first
    assert (compiling.CHECKOUT / "Makefile").is_file()  # the repository, not the package
