"""Benchmarking models: latency, time to first token and tokens/s per model over a fixed prompt set
(``foundry-gateway bench`` is its command line, ``app.cli.bench``).

Every request streams (TTFT needs it) with ``stream_options.include_usage`` so token counts come from
the runtime, not from counting chunks, and with ``Cache-Control: no-store``, so the gateway's response cache never
answers it: a bench measures the model. Each result says what the cache did (``X-Gateway-Cache``), and results
that did come from a cache are never written into the registry. Results go to timestamped CSV and JSON files with empty
``fluency``/``relevance``/``correctness`` columns that ``bench --rate FILE`` fills in, 1-5, by hand:
latency is measured, quality is judged.
"""

from __future__ import annotations

import csv
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app import __version__
from app.core.recent import nearest_rank
from app.curation import records as bench_records

SCORES = ("fluency", "relevance", "correctness")
COLUMNS = (
    "model", "task", "prompt_id", "repetition", "status", "latency_s", "ttft_s", "completion_tokens",
    "tokens_per_s", "routed_model", "cache", "output", "reference", *SCORES,
)
NO_CACHE = {"Cache-Control": "no-store"}  # the model answers, never the gateway's response cache
FROM_CACHE = ("hit", "coalesced")  # X-Gateway-Cache of an answer the model did not generate for this request
Progress = Callable[[int, int, str], None]  # (done, total, what runs now)


class BenchError(Exception):
    """A problem the user must fix (unreachable gateway, no models, bad prompt file)."""


@dataclass(frozen=True)
class Options:
    gateway: str = "http://127.0.0.1:8080"
    models: tuple[str, ...] = ()  # empty: every model that fits and is available
    prompts: str = "config/prompts.jsonl"
    repeat: int = 3
    max_tokens: int = 64
    temperature: float = 0.0
    timeout: float = 120.0
    direct: bool = False  # straight to the upstream, not through the gateway
    upstream: str | None = None
    api_key: str | None = None
    batch: bool = False  # the prompt set as one batch (/v1/batches), not request by request

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


# --- inputs -----------------------------------------------------------------------------------------------


def load_prompts(path: Path) -> list[dict[str, Any]]:
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read prompts file {path}: {exc.strerror}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path}:{number}: not JSON: {exc.msg}") from exc
        if not isinstance(item, dict) or not item.get("id") or not item.get("task") or not (
                item.get("prompt") or item.get("messages")):
            raise BenchError(f"{path}:{number}: needs id, task and prompt (or messages)")
        prompts.append(item)
    if not prompts:
        raise BenchError(f"{path} has no prompts")
    return prompts


def pick_models(options: Options) -> list[dict[str, Any]]:
    """Rows of /v1/models to benchmark: the named ones, else every model that fits and is available."""
    try:
        response = httpx.get(f"{options.gateway}/v1/models", timeout=10, headers=options.headers)
        rows: list[dict[str, Any]] = response.json()["data"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise BenchError(f"cannot list models from the gateway at {options.gateway}: {exc}") from exc
    if options.models:
        wanted = {name.lower() for name in options.models}
        chosen = [row for row in rows if row["id"].lower() in wanted]
        missing = wanted - {row["id"].lower() for row in chosen}
        if missing:
            raise BenchError(f"not in the registry: {', '.join(sorted(missing))}")
        return chosen
    chosen = [row for row in rows if row.get("fits") and row.get("available") is not False]
    if not chosen:
        raise BenchError("no registry model fits this host and is available on the upstream")
    return chosen


def _measured_ram(options: Options) -> dict[str, float]:
    """What the gateway measured each model to use (asked after the run: the run loaded them)."""
    try:
        rows = httpx.get(f"{options.gateway}/v1/models", timeout=10, headers=options.headers).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    return {r["id"]: r["measured_ram_gb"] for r in rows if r.get("measured_ram_gb") is not None}


# --- running ---------------------------------------------------------------------------------------------


def run_one(client: httpx.Client, url: str, model: str, prompt: dict[str, Any], options: Options
            ) -> dict[str, Any]:
    messages = prompt.get("messages") or [{"role": "user", "content": prompt["prompt"]}]
    body = {"model": model, "messages": messages, "stream": True, "max_tokens": options.max_tokens,
            "temperature": options.temperature, "stream_options": {"include_usage": True}}
    row: dict[str, Any] = {"status": "ok", "latency_s": None, "ttft_s": None, "completion_tokens": None,
                           "tokens_per_s": None, "routed_model": "", "cache": "", "output": ""}
    started = time.perf_counter()
    first = None
    pieces: list[str] = []
    usage: dict[str, Any] | None = None
    try:
        with client.stream("POST", url, json=body, headers={"X-Task": prompt["task"], **NO_CACHE},
                           timeout=options.timeout) as response:
            row["routed_model"] = response.headers.get("x-gateway-model", model)
            row["cache"] = response.headers.get("x-gateway-cache", "")
            if response.status_code >= 400:
                response.read()
                message = response.json().get("error", {}).get("message", response.text[:200])
                return {**row, "status": f"error: HTTP {response.status_code}: {message}"}
            for line in response.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    return {**row, "status": f"error: {event['error'].get('message', event['error'])}"}
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        first = first or time.perf_counter()
                        pieces.append(piece)
    except (httpx.HTTPError, ValueError) as exc:
        return {**row, "status": f"error: {exc.__class__.__name__}: {exc}"}
    latency = time.perf_counter() - started
    tokens = (usage or {}).get("completion_tokens") or len(pieces)
    ttft = (first - started) if first else None
    # output tokens per second of the whole request: honest even when a runtime delivers tokens in bursts
    return {**row, "latency_s": round(latency, 4), "ttft_s": round(ttft, 4) if ttft is not None else None,
            "completion_tokens": tokens, "tokens_per_s": round(tokens / latency, 1) if latency > 0 else None,
            "output": "".join(pieces)}


def run_bench(options: Options, progress: Progress = lambda done, total, what: None) -> dict[str, Any]:
    prompts = load_prompts(Path(options.prompts))
    models = pick_models(options)
    if options.direct:
        if not options.upstream:
            raise BenchError("--direct needs --upstream URL (the upstream's OpenAI base URL, with /v1)")
        url = f"{options.upstream.rstrip('/')}/chat/completions"
    else:
        url = f"{options.gateway}/v1/chat/completions"
    plan = [(m, p, r) for m in models for p in prompts if p["task"] in m["tasks"] for r in range(options.repeat)]
    if not plan:
        raise BenchError("no prompt has a task that the selected models serve")
    results = []
    started = datetime.now(UTC)
    with httpx.Client(headers=options.headers) as client:
        for done, (model, prompt, repetition) in enumerate(plan):
            progress(done, len(plan), f"{model['id']} · {prompt['id']}")
            target = model["upstream_id"] if options.direct else model["id"]
            row = run_one(client, url, target, prompt, options)
            results.append({"model": model["id"], "task": prompt["task"], "prompt_id": prompt["id"],
                            "repetition": repetition + 1, **row, "reference": prompt.get("reference", ""),
                            **dict.fromkeys(SCORES, "")})
        progress(len(plan), len(plan), "done")
    meta = {"started": started.isoformat(timespec="seconds"), "target": "direct" if options.direct else "gateway",
            "url": url, "repeat": options.repeat, "max_tokens": options.max_tokens,
            "temperature": options.temperature, "prompts": str(options.prompts), "host": platform.node(),
            "python": platform.python_version(), "prompt_set": bench_records.prompt_set(Path(options.prompts)),
            "host_summary": bench_records.host_summary(), "gateway_version": __version__,
            "cache": "no-store", "ram_gb": {} if options.direct else _measured_ram(options)}
    return {"meta": meta, "results": results, "summary": summarize(results)}


# --- results ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    found = nearest_rank(values, q)
    return None if found is None else round(found, 4)


def summarize(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in results:
        by_model.setdefault(row["model"], []).append(row)
    summary = []
    for model, rows in by_model.items():
        ok = [r for r in rows if r["status"] == "ok"]
        latency = [r["latency_s"] for r in ok if r["latency_s"] is not None]  # none in a batch
        ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
        speed = [r["tokens_per_s"] for r in ok if r["tokens_per_s"]]
        summary.append({
            "model": model, "requests": len(rows), "errors": len(rows) - len(ok),
            "latency_p50_s": percentile(latency, 0.5), "latency_p95_s": percentile(latency, 0.95),
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
            "tokens_per_s_mean": round(statistics.fmean(speed), 1) if speed else None,
        })
    return summary


def write_csv(path: Path, results: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)


def write_results(doc: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    json_path, csv_path = out_dir / f"bench-{stamp}.json", out_dir / f"bench-{stamp}.csv"
    json_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_csv(csv_path, doc["results"])
    return json_path, csv_path


def write_plot(doc: dict[str, Any], path: Path) -> Path:
    """The models side by side — latency, TTFT, tokens/s and mean rating: a PNG with matplotlib, else
    self-contained HTML with inline SVG."""
    summary = doc["summary"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _write_svg_html(summary, path.with_suffix(".html"))
    names = [s["model"] for s in summary]
    rated = [bench_records.ratings([r for r in doc["results"] if r["model"] == name]) for name in names]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    x = list(range(len(names)))
    for ax, key, title in ((axes[0], "latency", "latency (s)"), (axes[1], "ttft", "time to first token (s)")):
        ax.bar([i - 0.2 for i in x], [s[f"{key}_p50_s"] or 0 for s in summary], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [s[f"{key}_p95_s"] or 0 for s in summary], width=0.4, label="p95")
        ax.set_title(title)
        ax.legend()
    axes[2].bar(x, [s["tokens_per_s_mean"] or 0 for s in summary], color="#54a24b")
    axes[2].set_title("tokens/s (mean)")
    axes[3].bar(x, [r["mean"] if r else 0 for r in rated], color="#e45756")
    axes[3].set_ylim(0, 5.6)
    axes[3].set_title("mean rating 1-5 (n)")
    for i, r in enumerate(rated):
        axes[3].text(i, (r["mean"] if r else 0) + 0.1, f"n={r['n']}" if r else "not rated", ha="center", fontsize=8)
    for ax in axes:
        ax.set_xticks(x, names, rotation=20, ha="right")
    fig.suptitle(f"foundry-gateway bench {doc['meta']['started']}")
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _write_svg_html(summary: list[dict[str, Any]], path: Path) -> Path:
    top = max([s["latency_p95_s"] or 0 for s in summary] + [1e-9])
    bars = []
    for i, s in enumerate(summary):
        for j, key in enumerate(("latency_p50_s", "latency_p95_s", "ttft_p50_s")):
            height = 200 * (s[key] or 0) / top
            bars.append(f'<rect x="{40 + i * 90 + j * 22}" y="{220 - height:.1f}" width="20" height="{height:.1f}" '
                        f'fill="{["#4c78a8", "#f58518", "#54a24b"][j]}"><title>{s["model"]} {key}: {s[key]}</title>'
                        "</rect>")
        bars.append(f'<text x="{40 + i * 90}" y="240" font-size="11">{s["model"]}</text>')
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{60 + 90 * len(summary)}" height="260">{"".join(bars)}</svg>'
    path.write_text(f"<!doctype html><meta charset=utf-8><title>bench</title><h3>latency p50/p95, TTFT p50 (s)</h3>"
                    f"{svg}\n", encoding="utf-8")
    return path


def save_ratings(doc: dict[str, Any], path: Path) -> int:
    """Write a rated results document back (JSON and its CSV); returns how many results carry a rating."""
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_csv(path.with_suffix(".csv"), doc["results"])
    return sum(1 for r in doc["results"] if any(r.get(k) for k in SCORES))


def update_registry(doc: dict[str, Any], file: str) -> tuple[list[str], list[str], Path]:
    """Write each benchmarked model's ``measured`` record into the registry file (``registry annotate``): the
    names written, those the file does not have, and the file."""
    from app.core.registry_file import annotate
    from app.core.settings import load_settings

    path = Path(file or load_settings().registry_path)
    cached = [r for r in doc.get("results") or [] if isinstance(r, dict) and r.get("cache") in FROM_CACHE]
    if cached:
        raise ValueError(f"{len(cached)} of the results came from the gateway's response cache (X-Gateway-Cache: "
                         f"{cached[0]['cache']}): they measure the cache, not the model, so nothing was written. Run "
                         "the bench again (it sends Cache-Control: no-store).")
    found_meta = doc.get("meta")
    meta: dict[str, Any] = found_meta if isinstance(found_meta, dict) else {}
    if meta.get("cache") != "no-store" and meta.get("target") != "direct":
        raise ValueError("these results are from a bench that did not bypass the response cache (before 0.1.1): "
                         "they may measure the cache, not the model, so nothing was written. Run the bench again.")
    found = bench_records.records(doc)
    written = annotate(path, found)
    return written, sorted(set(found) - set(written)), path


# --- as a batch ---------------------------------------------------------------------------------------------


def run_bench_batch(options: Options, progress: Progress = lambda done, total, what: None,
                    poll: float = 0.5) -> dict[str, Any]:
    """The same prompt set sent as one batch (``/v1/batches``): per line the answer, its tokens and status, into
    the same results as a streamed run; latency and TTFT are not per request in a batch, so the meta has the
    batch's own time and lines per second instead."""
    if options.direct:
        raise BenchError("--batch runs through the gateway's Batch API: it cannot be --direct")
    prompts = load_prompts(Path(options.prompts))
    models = pick_models(options)
    plan = [(m, p, r) for m in models for p in prompts if p["task"] in m["tasks"] for r in range(options.repeat)]
    if not plan:
        raise BenchError("no prompt has a task that the selected models serve")
    lines = []
    for i, (model, prompt, _) in enumerate(plan):
        messages = prompt.get("messages") or [{"role": "user", "content": prompt["prompt"]}]
        lines.append(json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                                 "task": prompt["task"], "cache": "no-store",
                                 "body": {"model": model["id"], "messages": messages,
                                                                  "max_tokens": options.max_tokens,
                                                                  "temperature": options.temperature}}))
    started = datetime.now(UTC)
    with httpx.Client(base_url=options.gateway, headers=options.headers, timeout=options.timeout) as client:
        uploaded = _checked(client.post("/v1/files", files={"file": ("bench.jsonl", "\n".join(lines).encode())},
                                        data={"purpose": "batch"}))
        batch = _checked(client.post("/v1/batches", json={
            "input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "metadata": {"source": "foundry-gateway bench --batch"}}))
        clock = time.monotonic()  # the batch's own timestamps are whole seconds: too coarse to divide by
        while batch["status"] not in ("completed", "failed", "cancelled", "expired"):
            counts = batch["request_counts"]
            progress(counts["completed"] + counts["failed"], len(plan), f"batch {batch['id']}: {batch['status']}")
            time.sleep(poll)
            batch = _checked(client.get(f"/v1/batches/{batch['id']}"))
        seconds = time.monotonic() - clock
        if batch["status"] == "failed":
            problems = "; ".join(e["message"] for e in (batch.get("errors") or {}).get("data") or [])
            raise BenchError(f"the batch failed: {problems}")
        answers: dict[str, dict[str, Any]] = {}
        for file_id in (batch["output_file_id"], batch["error_file_id"]):
            if file_id:
                content = client.get(f"/v1/files/{file_id}/content")
                for line in content.text.splitlines():
                    if line.strip():
                        item = json.loads(line)
                        answers[item["custom_id"]] = item
    progress(len(plan), len(plan), "done")
    results = []
    for i, (model, prompt, repetition) in enumerate(plan):
        results.append({"model": model["id"], "task": prompt["task"], "prompt_id": prompt["id"],
                        "repetition": repetition + 1, **_batch_row(answers.get(str(i))),
                        "reference": prompt.get("reference", ""), **dict.fromkeys(SCORES, "")})
    meta = {"started": started.isoformat(timespec="seconds"), "target": "batch", "batch_id": batch["id"],
            "batch_status": batch["status"], "batch_seconds": seconds,
            "batch_lines_per_s": round(len(plan) / max(seconds, 1e-9), 2), "url": f"{options.gateway}/v1/batches",
            "repeat": options.repeat, "max_tokens": options.max_tokens, "temperature": options.temperature,
            "prompts": str(options.prompts), "host": platform.node(), "python": platform.python_version(),
            "prompt_set": bench_records.prompt_set(Path(options.prompts)),
            "host_summary": bench_records.host_summary(), "gateway_version": __version__,
            "cache": "no-store", "ram_gb": _measured_ram(options)}
    return {"meta": meta, "results": results, "summary": summarize(results)}


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise BenchError(f"{response.request.method} {response.request.url.path}: {response.status_code}: {message}")
    found: dict[str, Any] = response.json()
    return found


def _batch_row(item: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"status": "ok", "latency_s": None, "ttft_s": None, "completion_tokens": None,
                           "tokens_per_s": None, "routed_model": "", "cache": "no-store", "output": ""}
    if item is None:
        return {**row, "status": "error: not in the batch's output"}
    if item.get("error"):
        return {**row, "status": f"error: {item['error'].get('message', item['error'])}"}
    response = item["response"]
    body = response.get("body") or {}
    if response["status_code"] >= 400:
        message = (body.get("error") or {}).get("message", "")
        return {**row, "status": f"error: HTTP {response['status_code']}: {message}"}
    choices = body.get("choices") or [{}]
    return {**row, "completion_tokens": (body.get("usage") or {}).get("completion_tokens"),
            "routed_model": body.get("model", ""), "output": (choices[0].get("message") or {}).get("content") or ""}
