"""From a ``foundry-gateway bench`` results document to each model's ``measured`` record (``app.core.measured``):
timings from the run, the team's 1-5 ratings (``bench --rate``) per criterion and per task, an automatic
reference score kept apart from them, and what the numbers were measured on (prompt set, host, version).

The reference score is ROUGE-L F1 (Google's ``rouge-score``, the reference implementation) between each
output and its prompt's ``reference``, plus how often the output contains the reference outright: a cheap,
repeatable signal beside the manual ratings, never in place of them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import statistics
from pathlib import Path
from typing import Any

from app import __version__

SCORES = ("fluency", "relevance", "correctness")


def prompt_set(path: Path) -> dict[str, Any]:
    """The prompt file's identity: results from different prompt sets are not comparable."""
    data = path.read_bytes()
    count = sum(1 for line in data.decode("utf-8", "replace").splitlines()
                if line.strip() and not line.lstrip().startswith("#"))
    return {"file": str(path), "sha256": hashlib.sha256(data).hexdigest(), "prompts": count}


def host_summary() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    accelerator = "nvidia" if shutil.which("nvidia-smi") else "none"
    return {"cpu": cpu, "cores": os.cpu_count(), "accelerator": accelerator, "os": platform.system(),
            "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1)}


def _mean(values: list[float]) -> dict[str, Any] | None:
    return {"mean": round(statistics.fmean(values), 2), "n": len(values)} if values else None


def ratings(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean 1-5 rating per criterion, overall and per task, each with its count (None when nothing is rated)."""
    def scores(subset: list[dict[str, Any]], keys: tuple[str, ...]) -> list[float]:
        return [score for r in subset for k in keys if (score := _score(r.get(k))) is not None]

    overall = _mean(scores(rows, SCORES))
    if overall is None:
        return None
    out: dict[str, Any] = dict(overall)
    for key in SCORES:
        found = _mean(scores(rows, (key,)))
        if found:
            out[key] = found
    by_task = {}
    for task in sorted({str(r.get("task")) for r in rows}):
        found = _mean(scores([r for r in rows if r.get("task") == task], SCORES))
        if found:
            by_task[task] = found
    out["by_task"] = by_task
    return out


def _score(value: Any) -> float | None:
    """A 1-5 rating as `bench --rate` writes it (an int) or a CSV round-trip does ("4"); anything else: none."""
    if isinstance(value, bool):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if 1 <= score <= 5 else None


def reference_score(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """ROUGE-L F1 and contains-match against each prompt's reference (None when no prompt has one)."""
    pairs = [(str(r.get("output") or ""), str(r["reference"])) for r in rows
             if r.get("status") == "ok" and str(r.get("reference") or "").strip()]
    if not pairs:
        return None
    contains = [reference.strip().lower() in output.lower() for output, reference in pairs]
    out: dict[str, Any] = {"contains": round(sum(contains) / len(contains), 3), "n": len(pairs)}
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # the `bench` extra is not installed: contains-match only, and say so
        return {"method": "contains-match (install foundry-gateway[bench] for ROUGE-L)", **out}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(reference, output)["rougeL"].fmeasure for output, reference in pairs]
    return {"method": "rouge-l f1 (rouge-score), contains-match", "mean": round(statistics.fmean(rouge), 3), **out}


def records(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One ``measured`` record per benchmarked model."""
    found = doc.get("meta")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    out: dict[str, dict[str, Any]] = {}
    for summary in doc.get("summary") or []:
        model = summary.get("model") if isinstance(summary, dict) else None
        if not isinstance(model, str):
            continue
        rows = [r for r in doc.get("results", []) if r.get("model") == model]
        record: dict[str, Any] = {
            "date": meta.get("started"), "gateway_version": meta.get("gateway_version", __version__),
            "requests": summary.get("requests"), "errors": summary.get("errors"),
            "latency_ms": _ms(summary, "latency"), "ttft_ms": _ms(summary, "ttft"),
            "tokens_per_s": summary.get("tokens_per_s_mean"),
        }
        ram = (meta.get("ram_gb") or {}).get(model)
        if ram is not None:
            record["ram_gb"] = ram
        if meta.get("prompt_set"):
            record["prompt_set"] = meta["prompt_set"]
        rated = ratings(rows)
        if rated:
            record["rating"] = rated
        scored = reference_score(rows)
        if scored:
            record["reference_score"] = scored
        if meta.get("host_summary"):
            record["host"] = meta["host_summary"]
        out[model] = {k: v for k, v in record.items() if v is not None}
    return out


def _ms(summary: dict[str, Any], name: str) -> dict[str, float] | None:
    values = {q: summary.get(f"{name}_{q}_s") for q in ("p50", "p95")}
    if all(v is None for v in values.values()):
        return None
    return {q: round(v * 1000, 1) for q, v in values.items() if v is not None}
