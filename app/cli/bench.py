"""``foundry-gateway bench``: latency, time to first token and tokens/s per model over a fixed prompt set, with
a progress bar; ``--rate FILE`` scores an earlier run's answers 1-5 in the terminal; ``--update-registry`` writes
each model's measured record into ``models.json``. The work itself is ``app.curation.bench``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from app.cli import output, remote
from app.cli.output import CliError, styled
from app.core.registry_file import RegistryChanged
from app.curation import bench
from app.curation.bench import SCORES, BenchError, Options


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="Benchmark latency, TTFT and tokens/s per model over a fixed prompt set.",
        description="Run config/prompts.jsonl through the gateway (or straight to the upstream) for every "
        "selected model, streaming, and write CSV + JSON results with empty 1-5 rating columns.",
    )
    p.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway URL (default %(default)s)")
    p.add_argument("--api-key", help="Bearer key for the gateway (default: $GATEWAY_API_KEY)")
    p.add_argument("--model", action="append", help="model to run (repeatable; default: all that fit)")
    p.add_argument("--prompts", default="config/prompts.jsonl", help="prompt set, JSON lines (default %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per prompt (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    p.add_argument("--batch", action="store_true", help="send the prompt set as one batch (/v1/batches): answers "
                   "and tokens per prompt, the batch's lines/s; no per-request latency")
    p.add_argument("--direct", action="store_true", help="bypass the gateway: send to --upstream")
    p.add_argument("--upstream", help="with --direct: the upstream's OpenAI base URL (…/v1)")
    p.add_argument("--out", default="results", help="folder for the CSV/JSON/PNG (default %(default)s)")
    p.add_argument("--plot", action="store_true", help="also write a latency/TTFT chart (PNG, or HTML)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    p.add_argument("--rate", metavar="FILE", help="score an earlier run's results (1-5) in the terminal")
    p.add_argument("--update-registry", nargs="?", const="", metavar="FILE",
                   help="write each model's measured record (timings, ratings, reference score, RAM, host) into "
                        "the registry (default GATEWAY_REGISTRY_PATH or models.json); with --rate, after rating")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.rate:
        rate(Path(args.rate), sys.stdin)
        if args.update_registry is not None:
            _update_registry(json.loads(Path(args.rate).read_text(encoding="utf-8")), args.update_registry)
        return 0
    options = Options(gateway=remote.normalize(args.gateway), models=tuple(args.model or ()), prompts=args.prompts,
                      repeat=args.repeat, max_tokens=args.max_tokens, temperature=args.temperature,
                      timeout=args.timeout, direct=args.direct, upstream=args.upstream, api_key=remote.api_key(args),
                      batch=args.batch)
    try:
        with _ProgressBar() as bar:
            doc = (bench.run_bench_batch if options.batch else bench.run_bench)(options, bar.update)
    except BenchError as exc:
        raise CliError(str(exc)) from None
    json_path, csv_path = bench.write_results(doc, Path(args.out))
    plot = bench.write_plot(doc, json_path) if args.plot else None
    if args.json:
        output.json_out(doc)
    else:
        print_summary(doc["summary"])
    if options.batch:
        meta = doc["meta"]
        output.note(f"batch {meta['batch_id']} {meta['batch_status']}: {meta['batch_lines_per_s']} lines/s")
    if not options.direct:
        output.note("every request was sent with Cache-Control: no-store: answered by the model, never by the "
                    "gateway's response cache")
    output.note(f"wrote {csv_path} and {json_path}" + (f", plot {plot}" if plot else ""))
    if args.update_registry is not None:
        _update_registry(doc, args.update_registry)
    return 0


def _update_registry(doc: dict[str, Any], file: str) -> None:
    try:
        written, missing, path = bench.update_registry(doc, file)
    except (RegistryChanged, ValueError) as exc:  # a changed file, or results a cache answered
        raise CliError(str(exc)) from None
    output.note(styled("measured", "green"), f" written to {path} for {', '.join(written) or 'no model'}"
                + (f"; not in that file: {', '.join(missing)}" if missing else ""))


def print_summary(summary: list[dict[str, Any]]) -> None:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    output.table(["model", "requests", "errors", "latency p50", "latency p95", "TTFT p50", "TTFT p95", "tokens/s"],
                 [[s["model"], str(s["requests"]), str(s["errors"]), fmt(s["latency_p50_s"]), fmt(s["latency_p95_s"]),
                   fmt(s["ttft_p50_s"]), fmt(s["ttft_p95_s"]),
                   "–" if s["tokens_per_s_mean"] is None else f"{s['tokens_per_s_mean']:.1f}"] for s in summary],
                 title="bench summary (seconds; tokens/s)",
                 right=("requests", "errors", "latency p50", "latency p95", "TTFT p50", "TTFT p95", "tokens/s"))


class _ProgressBar:
    """The bench's progress on stderr (a bar on a terminal; nothing in a pipe or a log)."""

    def __init__(self) -> None:
        console = Console(stderr=True, markup=False, highlight=False)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=console, transient=True,
                                 disable=not console.is_terminal)
        self.task: TaskID | None = None

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, done: int, total: int, what: str) -> None:
        if self.task is None:
            self.task = self.progress.add_task(what, total=total)
        self.progress.update(self.task, completed=done, description=what)


def rate(path: Path, stdin: TextIO) -> None:
    """Ask a person for 1-5 scores of each unrated result; saves after every row (q quits). Model output is shown
    as the text it is (never read as markup)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = [r for r in doc["results"] if r["status"] == "ok" and not all(r.get(k) for k in SCORES)]
    console = Console(stderr=True, markup=False, highlight=False)
    console.print(f"{len(rows)} results to rate in {path} (1-5, Enter skips, q saves and quits)")
    for number, row in enumerate(rows, start=1):
        console.rule(Text(f"{number}/{len(rows)} · {row['model']} · {row['prompt_id']} #{row['repetition']}"))
        console.print(Text.assemble(styled("reference: ", "bold"), str(row.get("reference") or "–")))
        console.print(Text.assemble(styled("output: ", "bold"), str(row["output"])))
        for key in SCORES:
            while True:
                console.print(f"{key} [1-5]: ", end="")
                answer = stdin.readline()
                if not answer or answer.strip().lower() == "q":  # end of input, or quit: save what we have
                    _saved(doc, path, console)
                    return
                answer = answer.strip()
                if answer == "":
                    break
                if answer in {"1", "2", "3", "4", "5"}:
                    row[key] = int(answer)
                    break
                console.print(styled("enter 1-5, Enter to skip, q to quit", "red"))
        bench.save_ratings(doc, path)
    _saved(doc, path, console)


def _saved(doc: dict[str, Any], path: Path, console: Console) -> None:
    rated = bench.save_ratings(doc, path)
    console.print(f"saved {rated} rated results to {path} and {path.with_suffix('.csv')}")
