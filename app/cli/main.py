"""``foundry-gateway``: run the gateway and curate its models from the terminal.

Every command shares the server's code: the same registry loader, RAM budget and routing policy, so
``foundry-gateway select --task code`` says exactly what ``GET /v1/route?task=code`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from app import __version__
from app.access.keys import KeysError
from app.cli import keys as keys_cli
from app.core.errors import GatewayError
from app.core.portable import event_loop
from app.core.registry import FIELDS, RegistryError, build_registry, dump_registry, load_registry
from app.core.settings import Settings, load_settings
from app.curation import bench as benchmark
from app.policy.routing import ENDPOINT_NEEDS, latency_budget

out = Console()
err = Console(stderr=True)

EPILOG = """examples:
  foundry-gateway serve                      # managed Foundry Local + gateway on 127.0.0.1:8080
  foundry-gateway models --task chat         # what exists and what fits this host
  foundry-gateway select --task code         # which model code requests get, and why
  foundry-gateway registry validate          # check models.json
  foundry-gateway bench --repeat 3 --plot    # latency/TTFT/tokens per model into results/
"""


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "registry", None):
        overrides["registry_path"] = Path(args.registry)
    if getattr(args, "upstream", None):
        overrides["upstream_url"] = args.upstream
        overrides["upstream_mode"] = "external"
    return load_settings(**overrides)


def _offline_gateway(args: argparse.Namespace) -> Any:
    """A Gateway object for read-only commands; asks the upstream what it has when one is reachable."""
    from app.gateway.gateway import Gateway

    gw = Gateway(_settings(args))

    async def probe() -> None:
        if gw.settings.upstream_mode == "external" or getattr(args, "upstream", None):
            await gw.inventory.refresh()
        await gw.upstream.aclose()

    asyncio.run(probe())
    return gw


def _local_gateway(settings: Settings) -> str:
    """The URL of the gateway these settings describe, as reached from this host."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _remote(url: str, path: str) -> Any:
    import httpx

    response = httpx.get(url.rstrip("/") + path, timeout=10)
    data = orjson.loads(response.content)
    if response.status_code >= 400:
        raise GatewayError(response.status_code, data.get("error", {}).get("message", response.text))
    return data


# --- serve ---------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    for key in ("host", "port", "workers"):
        value = getattr(args, key)
        if value is not None:
            os.environ[f"GATEWAY_{key.upper()}"] = str(value)
    if args.upstream:
        os.environ["GATEWAY_UPSTREAM_URL"] = args.upstream
        os.environ["GATEWAY_UPSTREAM_MODE"] = "external"
    if args.registry:
        os.environ["GATEWAY_REGISTRY_PATH"] = args.registry
    settings = load_settings()
    registry = load_registry(settings.registry_path)  # fail fast, with the precise message, before binding
    if settings.workers > 1:
        problem = workers_problem(settings, [e.max_concurrency for e in registry if e.max_concurrency])
        if problem:
            err.print(f"[red]--workers {settings.workers} refused:[/] {problem}", highlight=False)
            return 2
        metrics_dir = settings.metrics_dir or Path(tempfile.gettempdir()) / f"foundry-gateway-metrics-{os.getpid()}"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # stale files from a previous run would be summed in
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    loop = event_loop(args.loop or settings.loop)
    # plain text, one line: rich would wrap it at 80 columns in a pipe or a log file
    sys.stderr.write(f"foundry-gateway {__version__} on http://{settings.host}:{settings.port} "
                     f"(upstream: {settings.upstream_mode}, registry: {settings.registry_path}, loop: {loop})\n")
    sys.stderr.flush()
    uvicorn.run(
        "app.server.app:create_app", factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        loop=loop, http="httptools", log_level="warning", access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=round(settings.shutdown_grace) or None, timeout_keep_alive=30,
    )
    return 0


def workers_problem(settings: Settings, model_limits: list[int]) -> str | None:
    """Why ``settings.workers`` processes would be wrong here, or None. Each worker enforces 1/N of every
    limit, so together they never exceed it; what cannot be split that way is refused."""
    workers = settings.workers
    if settings.upstream_mode == "managed":
        return "several workers need an external upstream (each worker would start its own runtime)."
    if settings.upstream_kind == "foundry":
        return ("with a Foundry Local upstream every worker would load and unload models on its own, and one "
                "worker's LRU or idle unload could unload a model another worker is streaming on. One worker "
                "relays well over 1,000 requests/s (docs/performance.md); run one, or several gateways each with "
                "its own runtime.")
    limited = _limited_keys(settings)
    if limited and not settings.redis_url:
        return (f"the keys file gives quotas to {', '.join(limited)}, and without GATEWAY_REDIS_URL every worker "
                f"would count them on its own ({workers} workers: up to {workers}x each quota). Set GATEWAY_REDIS_URL "
                "(the workers then share the counters) or run one worker.")
    limits = {"GATEWAY_MODEL_CONCURRENCY": settings.model_concurrency, "GATEWAY_MAX_IN_FLIGHT": settings.max_in_flight,
              **{f"a registry max_concurrency of {n}": n for n in model_limits}}
    for name, limit in limits.items():
        if limit < workers:
            return (f"{name} ({limit}) cannot be split over {workers} workers: each enforces its share of every "
                    f"limit, and a share below 1 would let the workers together exceed it. Use at most {limit} "
                    f"workers or raise the limit.")
    return None


def _limited_keys(settings: Settings) -> list[str]:
    """The names of the keys with quotas in ``GATEWAY_KEYS_FILE`` (none without one)."""
    from app.access.keys import load_keys

    if settings.keys_file is None:
        return []
    return [key.name for key in load_keys(settings.keys_file) if key.limited]


# --- models / select ------------------------------------------------------------------------------------


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else ("[green]yes[/]" if value else "[red]no[/]")


def cmd_models(args: argparse.Namespace) -> int:
    if args.gateway:
        query = f"?task={args.task}" if args.task else ""
        rows = _remote(args.gateway, f"/v1/models{query}")["data"]
        budget = None
    else:
        from app.server.api import model_rows

        gw = _offline_gateway(args)
        if args.task and args.task not in gw.registry.tasks:
            err.print(f"[red]Unknown task '{args.task}'.[/] Known tasks: {', '.join(gw.registry.tasks)}")
            return 2
        rows = model_rows(gw, args.task)
        budget = gw.memory
    if args.json:
        _print_json({"host": None if budget is None else {"total_gb": budget.total_gb, "budget_gb": budget.budget_gb,
                                                         "source": budget.source}, "models": rows})
        return 0
    title = "Models" if budget is None else f"Models — this host: {budget.describe()}"
    table = Table(title=title, title_justify="left")
    table.add_column("model", no_wrap=True)
    for name in ("task", "can", "min RAM", "measured", "fits", "available", "loaded"):
        table.add_column(name)
    fleet = any(row.get("nodes") for row in rows)  # asked a front: each model's state on each node
    if fleet:
        table.add_column("nodes")
    benched = any(row.get("measured") for row in rows)
    if benched:  # what the team's bench wrote into the registry
        for name in ("p50/p95 ms", "tok/s", "rating"):
            table.add_column(name, justify="right")
    if args.wide:
        table.add_column("upstream id", overflow="fold")
        table.add_column("notes", overflow="fold")
    for row in rows:
        cells = [
            row["id"] + (" [dim](pinned)[/]" if row.get("pinned") else ""), ", ".join(row["tasks"]),
            ", ".join(row.get("capabilities", [])), f"{row['min_ram_gb']:g} GiB",
            "–" if row.get("measured_ram_gb") is None else f"{row['measured_ram_gb'] * 1024:.0f} MiB",
            "[green]yes[/]" if row["fits"] else "[red]no[/]",
            _yes_no(row["available"]), _yes_no(row["loaded"] if row["available"] else None),
        ]
        if fleet:
            cells.append("\n".join(f"{name}{' (loaded)' if state['loaded'] else ''}"
                                   + ("" if state["healthy"] else " [red]down[/]")
                                   for name, state in (row.get("nodes") or {}).items()))
        if benched:
            cells += _measured_cells(row.get("measured") or {})
        table.add_row(*cells, *([row["upstream_id"], row["notes"]] if args.wide else []))
    out.print(table)
    if rows and all(row["available"] is None for row in rows):
        out.print("[dim]available/loaded: unknown (no upstream reachable; pass --upstream URL or --gateway URL)[/]")
    return 0


def _measured_cells(measured: dict[str, Any]) -> list[str]:
    latency: dict[str, Any] = measured["latency_ms"] if isinstance(measured.get("latency_ms"), dict) else {}
    rating: dict[str, Any] = measured["rating"] if isinstance(measured.get("rating"), dict) else {}
    return [
        f"{latency.get('p50', '–')}/{latency.get('p95', '–')}" if latency else "–",
        f"{measured['tokens_per_s']:.0f}" if isinstance(measured.get("tokens_per_s"), int | float) else "–",
        f"{rating['mean']:.1f} (n={rating.get('n', 0)})" if isinstance(rating.get("mean"), int | float) else "–",
    ]


def cmd_select(args: argparse.Namespace) -> int:
    if args.gateway:
        query = "&".join(f"{k}={v}" for k, v in (("task", args.task), ("model", args.model),
                                                   ("endpoint", args.endpoint), ("tools", args.tools and "true"),
                                                   ("latency_budget_ms", args.latency_budget_ms))
                         if v is not None and v is not False)
        decision = _remote(args.gateway, f"/v1/route?{query}")
    else:
        gw = _offline_gateway(args)
        need = {ENDPOINT_NEEDS[args.endpoint], *(["tools"] if args.tools else [])}
        route = gw.route(args.model, args.task, frozenset(need), args.latency_budget_ms)
        decision = route.as_dict()
        decision["upstream_id"] = gw.inventory.upstream_id(route.model)
        decision["host"] = {"ram_gb": round(gw.memory.total_gb, 2), "budget_gb": round(gw.memory.budget_gb, 2),
                            "source": gw.memory.source}
    if args.json:
        _print_json(decision)
        return 0
    host = decision["host"]
    out.print(f"[bold]{decision['model']}[/] for task [bold]{decision['task']}[/] "
              f"({decision['reason']}: {decision['explanation']}); upstream id {decision['upstream_id']}")
    out.print(f"[dim]host RAM {host['ram_gb']} GiB ({host['source']}), budget {host['budget_gb']} GiB[/]")
    table = Table(title_justify="left")
    for name in ("candidate", "min RAM", "decision", "why"):
        table.add_column(name)
    colours = {"selected": "green", "fallback": "cyan", "skipped": "yellow"}
    for c in decision["candidates"]:
        colour = colours.get(c["decision"], "white")
        table.add_row(c["model"], f"{c['min_ram_gb']:g} GiB", f"[{colour}]{c['decision']}[/]", c["reason"])
    out.print(table)
    if decision.get("nodes"):  # a front: where the model would run
        nodes = Table(title=f"{decision['model']} on the nodes", title_justify="left")
        for name in ("node", "decision", "why"):
            nodes.add_column(name)
        for n in decision["nodes"]:
            nodes.add_row(n["node"], f"[{colours.get(n['decision'], 'white')}]{n['decision']}[/]", n["reason"])
        out.print(nodes)
    return 0


# --- status -------------------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """The console's view (GET /v1/console) in the terminal: budget, loaded models, traffic, decisions, nodes."""
    settings = _settings(args)
    state = _remote(args.gateway or _local_gateway(settings), "/v1/console")
    if args.json:
        _print_json(state)
        return 0
    budget = state["host"]
    used = sum(m["ram_gb"] for m in budget["loaded"])
    ready = "[green]ready[/]" if state["ready"] else "[red]not ready[/]"
    loaded = ", ".join(f"{m['model']} ({m['ram_gb']} GiB)" for m in budget["loaded"]) or "no loaded models"
    out.print(f"[bold]foundry-gateway {state['version']}[/] — {ready}; RAM: {used:.2f} of {budget['budget_gb']} GiB "
              f"budget in {loaded}")
    last_minute = state["traffic"][-6:]
    rate = sum(p["requests_per_s"] for p in last_minute) / max(len(last_minute), 1)
    ttft = next((p for p in reversed(state["traffic"]) if p["ttft_p50_ms"] is not None), None)
    ttft_text = f"{ttft['ttft_p50_ms']}/{ttft['ttft_p95_ms']} ms" if ttft else "–"
    errors = max((p["error_rate"] for p in last_minute), default=0.0)
    out.print(f"last minute: {rate:.2f} req/s, TTFT p50/p95 {ttft_text}, errors up to {errors:.1%}")
    table = Table(title="last routing decisions", title_justify="left")
    for name in ("endpoint", "model", "task", "why", "node", "status", "ms"):
        table.add_column(name)
    for d in state["decisions"][:args.last]:
        table.add_row(d["endpoint"], d["model"], d["task"] or "", f"{d['reason']}; {d['why']}", d["node"] or "",
                      str(d["status"]), str(d["duration_ms"]))
    out.print(table)
    if state.get("nodes"):
        nodes = Table(title="nodes", title_justify="left")
        for name in ("node", "health", "loaded", "in flight", "queued"):
            nodes.add_column(name)
        for n in state["nodes"]:
            nodes.add_row(n["node"], "[green]up[/]" if n["healthy"] else f"[red]down[/] {n['why_down']}",
                          ", ".join(n["loaded"]), str(n["in_flight"]), str(n["queued"]))
        out.print(nodes)
    return 0


# --- registry -------------------------------------------------------------------------------------------


def cmd_registry_validate(args: argparse.Namespace) -> int:
    path = Path(args.file or load_settings().registry_path)
    try:
        registry = load_registry(path)
    except RegistryError as exc:
        if args.json:
            _print_json({"valid": False, "file": str(path), "problems": exc.problems})
        else:
            for problem in exc.problems:
                err.print(f"[red]error[/] {problem}", highlight=False)
        return 1
    if args.json:
        _print_json({"valid": True, "file": str(path), "models": len(registry), "tasks": list(registry.tasks)})
    else:
        out.print(f"[green]ok[/] {path}: {len(registry)} models, tasks: {', '.join(registry.tasks)}")
    return 0


def cmd_registry_add(args: argparse.Namespace) -> int:
    path = Path(args.file or load_settings().registry_path)
    try:
        registry = load_registry(path) if path.exists() else None
    except RegistryError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/] {problem}", highlight=False)
        return 1
    item: dict[str, Any] = {"name": args.name, "task": args.task if len(args.task) > 1 else args.task[0],
                            "min_ram_gb": args.min_ram_gb}
    for key in ("notes", "upstream_id", "priority", "context_length", "default_max_tokens", "path"):
        value = getattr(args, key)
        if value is not None:
            item[key] = value
    if args.alias:
        item["aliases"] = args.alias
    existing = [entry.to_dict() for entry in registry] if registry else []
    return _append_entry(path, existing, item)


def _append_entry(path: Path, existing: list[dict[str, Any]], item: dict[str, Any]) -> int:
    try:
        # validate the whole new registry: duplicates and field errors are reported like `validate`
        new = build_registry([*existing, item], label=path.name, base_dir=path.parent)
    except RegistryError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/] {problem}", highlight=False)
        return 1
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(dump_registry(new, base_dir=path.parent))
    tmp.replace(path)  # atomic: a running gateway never reads half a file
    out.print(f"[green]added[/] {item['name']} to {path} ({len(new)} model{'s' if len(new) != 1 else ''})")
    return 0


def cmd_registry_annotate(args: argparse.Namespace) -> int:
    try:
        doc = orjson.loads(Path(args.results).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        err.print(f"[red]error[/] cannot read {args.results}: {exc}")
        return 1
    if not isinstance(doc, dict) or "summary" not in doc:
        err.print(f"[red]error[/] {args.results} is not a `foundry-gateway bench` results file")
        return 1
    return benchmark.update_registry(doc, args.file or "")


# --- compile ----------------------------------------------------------------------------------------------


def cmd_compile(args: argparse.Namespace) -> int:
    import time

    import psutil
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from app.curation import compile as builder

    args.task = args.task or ["chat"]
    registry_path = Path(args.file or load_settings().registry_path)
    registry = load_registry(registry_path) if registry_path.exists() else None
    if registry is not None and registry.lookup(args.name) is not None:
        err.print(f"[red]error[/] '{args.name}' is already in {registry_path}; pick another --name.")
        return 1
    hf_dir = Path(args.hf_folder)
    folder = Path(args.out) if args.out else registry_path.parent / "models" / args.name
    try:
        builder.check_target(args.name, hf_dir, folder, registry_path, force=args.force)
        python = builder.builder_python(args.python)
        with err.status("Checking the checkpoint and the model builder…"):
            supported = builder.supported_architectures(python)
            planned = builder.plan(hf_dir, args.precision, supported)
            builder.check_room(planned, folder, psutil.virtual_memory().available)
        err.print(f"[green]✓[/] {planned.architecture}, ~{planned.parameters / 1e6:.1f} M parameters → "
                  f"{args.precision} for {args.execution_provider}: about {_size(planned.output_bytes)} out, "
                  f"{_size(planned.disk_bytes)} of disk and {_size(planned.ram_bytes)} of RAM while building",
                  highlight=False)
        started = time.perf_counter()
        extra = {"include_hidden_states": "true"} if "embeddings" in args.task else None
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                      transient=True) as progress:
            step = progress.add_task("model builder starting…")
            builder.build_folder(hf_dir, folder.resolve(), precision=args.precision, provider=args.execution_provider,
                                 python=python, extra_options=extra,
                                 on_line=lambda line: progress.update(step, description=line[:100]))
        context = builder.set_context_length(folder, planned.context_length)
    except builder.CompileError as exc:
        err.print(f"[red]error[/] {exc}", highlight=False)
        return 1
    size = builder.folder_size(folder)
    err.print(f"[green]✓[/] built {folder} ({_size(size)}) in {time.perf_counter() - started:.0f}s", highlight=False)
    variant = "cpu" if args.execution_provider == "cpu" else "gpu"
    item: dict[str, Any] = {
        "name": args.name, "task": args.task if len(args.task) > 1 else args.task[0],
        "min_ram_gb": max(0.1, round(size * 1.3 / 1024**3, 2)), "upstream_id": f"{args.name}-generic-{variant}:1",
        "path": str(folder.resolve()), "notes": f"compiled from {hf_dir.name} ({planned.architecture}, "
                                                f"{args.precision}, {args.execution_provider})",
    }
    if context:
        item["context_length"] = context
    return _append_entry(registry_path, [e.to_dict() for e in registry] if registry else [], item)


def _size(value: float) -> str:
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 / 10 else f"{value / 1024**2:.1f} MiB"


# --- pull -------------------------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    from app.upstream.catalog import pull_model

    return pull_model(args.name, cache_dir=_settings(args).foundry_cache_dir, console=err)


# --- cache -------------------------------------------------------------------------------------------------


def _cache_context(args: argparse.Namespace) -> tuple[Settings, Any, set[str] | None, str]:
    """Settings, registry, what the runtime has loaded (None: no gateway answered) and the gateway asked."""
    import httpx

    settings = _settings(args)
    url = args.gateway or _local_gateway(settings)
    key = settings.admin_api_key or next(iter(settings.all_api_keys), None)
    loaded: set[str] | None
    try:
        answer = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=10,
                           headers={"Authorization": f"Bearer {key}"} if key else {})
        answer.raise_for_status()
        loaded = {str(r["upstream_id"]) for r in answer.json()["data"] if r.get("loaded")}
    except httpx.ConnectError:  # no gateway running there, so no runtime of ours has anything loaded
        loaded = set() if args.gateway is None else None
    except (httpx.HTTPError, ValueError, KeyError):  # it answered, but not with its models: unknown
        loaded = None
    return settings, load_registry(settings.registry_path), loaded, url


def cmd_cache_dir(args: argparse.Namespace) -> int:
    out.print(str(_settings(args).foundry_cache_dir.resolve()), highlight=False)
    return 0


def cmd_cache_ls(args: argparse.Namespace) -> int:
    from app.curation.cache import list_cache

    settings, registry, loaded, url = _cache_context(args)
    cache_dir = settings.foundry_cache_dir.resolve()
    rows = list_cache(cache_dir, registry, loaded)
    if args.json:
        _print_json({"cache_dir": str(cache_dir), "gateway": url if loaded is not None else None,
                     "models": [row.as_dict() for row in rows]})
        return 0
    table = Table(title=f"Foundry Local cache — {cache_dir}", title_justify="left")
    for name in ("model", "kind", "version", "size", "registered as", "loaded"):
        table.add_column(name, justify="right" if name == "size" else "left")
    for row in rows:
        table.add_row(row.id, row.kind, "–" if row.version is None else str(row.version),
                      f"{row.size_bytes / 1024**2:.1f} MiB", row.registered_as or "[dim]–[/]", _yes_no(row.loaded))
    out.print(table)
    if loaded is None:
        out.print(f"[dim]loaded: unknown (the gateway at {url} could not be asked; pass --gateway URL)[/]")
    elif not loaded and not any(row.loaded for row in rows):
        out.print(f"[dim]loaded: no gateway answered at {url}, so nothing is loaded through it[/]")
    return 0


def cmd_cache_rm(args: argparse.Namespace) -> int:
    from app.curation.cache import find, list_cache, remove

    settings, registry, loaded, _ = _cache_context(args)
    cache_dir = settings.foundry_cache_dir.resolve()
    row = find(list_cache(cache_dir, registry, loaded), args.name, registry)
    if row is None:
        err.print(f"[red]error[/] '{args.name}' is not in the cache ({cache_dir}); see `foundry-gateway cache ls`.")
        return 1
    if row.loaded is not False and not args.force:
        why = "is loaded in the running runtime" if row.loaded else \
            "may be loaded: the gateway could not be asked (pass --gateway URL, or set its API key)"
        err.print(f"[red]error[/] {row.id} {why}; unload it first, or pass --force (the runtime keeps it in "
                  "memory until it unloads).")
        return 1
    try:
        out.print(remove(cache_dir, row), highlight=False)
    except ValueError as exc:
        err.print(f"[red]error[/] {exc}", highlight=False)
        return 1
    if row.registered_as and row.kind == "local folder":
        out.print(f"[dim]models.json still lists '{row.registered_as}' with this folder: the managed runtime "
                  "registers it again at its next start (remove the entry to forget it for good).[/]")
    return 0


# --- settings -------------------------------------------------------------------------------------------


def settings_table() -> str:
    """The README's settings table, generated from the Settings class."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or "(empty)"
        shown = "(unset)" if default is None else str(default)
        lines.append(f"| `GATEWAY_{name.upper()}` | `{shown}` | {field.description or ''} |")
    return "\n".join(lines)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(settings_table() + "\n")
        return 0
    current = load_settings().model_dump(mode="json")
    for secret in ("api_keys", "upstream_api_key", "metrics_api_key", "admin_api_key"):
        if current.get(secret):
            current[secret] = "***"
    if args.json:
        _print_json(current)
        return 0
    table = Table(title="Settings in force (GATEWAY_* environment, config/gateway.env)", title_justify="left")
    table.add_column("variable")
    table.add_column("value")
    for name, value in current.items():
        table.add_row(f"GATEWAY_{name.upper()}", str(value))
    out.print(table)
    return 0


# --- parser ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-gateway",
        description="One stable OpenAI-compatible URL in front of Foundry Local: routes each request to the "
        "best model for its task that fits this host's RAM.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"foundry-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = command("serve", "Run the gateway (managed Foundry Local unless --upstream is given).", cmd_serve)
    p.add_argument("--host", help="listen address (GATEWAY_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (GATEWAY_PORT, default 8080)")
    p.add_argument("--workers", type=int, help="worker processes (needs an external upstream)")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"],
                   help="event loop (GATEWAY_LOOP, default auto: uvloop where installed, not on Windows)")
    p.add_argument("--upstream", help="URL of a running upstream (external mode)")
    p.add_argument("--registry", help="registry file (default models.json)")

    def source_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--registry", help="registry file (default models.json)")
        p.add_argument("--upstream", help="ask this upstream URL what it has")
        p.add_argument("--gateway", help="ask a running gateway at this URL instead")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("models", "List registry models, whether they fit this host, and the upstream's state.", cmd_models)
    p.add_argument("--task", help="only models for this task")
    p.add_argument("--wide", action="store_true", help="also show upstream ids and notes")
    source_options(p)

    p = command("select", "Show the model a request would be routed to, and why.", cmd_select)
    p.add_argument("--task", help="task (default: the default task)")
    p.add_argument("--model", help="a pinned model name, alias or upstream id")
    p.add_argument("--endpoint", choices=list(ENDPOINT_NEEDS), default="chat",
                   help="the endpoint the request goes to (default: chat)")
    p.add_argument("--tools", action="store_true", help="the request carries tools")
    p.add_argument("--latency-budget-ms", type=latency_budget,
                   help="as X-Latency-Budget-Ms: skip models whose measured p95 is over it")
    source_options(p)

    p = command("status", "What a running gateway is doing: RAM, loaded models, traffic, decisions, nodes.",
                cmd_status)
    p.add_argument("--gateway", help="the gateway to ask (default: this host's)")
    p.add_argument("--last", type=int, default=10, help="how many routing decisions to show (default 10)")
    p.add_argument("--json", action="store_true", help="the console's JSON (GET /v1/console)")

    reg = sub.add_parser("registry", help="Validate or edit the model registry.", description="Registry tools.")
    reg_sub = reg.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    p = reg_sub.add_parser("validate", help="Check a registry file; exit 1 with precise errors.")
    p.add_argument("file", nargs="?", help="registry file (default: GATEWAY_REGISTRY_PATH or models.json)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_registry_validate)
    p = reg_sub.add_parser(
        "add", help="Append a validated entry to the registry.",
        epilog="fields: " + "; ".join(f"{k}: {v}" for k, v in FIELDS.items()),
    )
    p.add_argument("name", help="model name apps use")
    p.add_argument("--task", action="append", required=True, help="task it serves (repeatable)")
    p.add_argument("--min-ram-gb", type=float, required=True, help="GiB of RAM it needs")
    p.add_argument("--notes")
    p.add_argument("--alias", action="append", help="another name (repeatable)")
    p.add_argument("--upstream-id", help="exact upstream id, e.g. name-generic-cpu:1")
    p.add_argument("--priority", type=int)
    p.add_argument("--context-length", type=int)
    p.add_argument("--default-max-tokens", type=int)
    p.add_argument("--path", help="local ONNX Runtime GenAI model folder")
    p.add_argument("--file", help="registry file (default: GATEWAY_REGISTRY_PATH or models.json)")
    p.set_defaults(func=cmd_registry_add)
    p = reg_sub.add_parser(
        "annotate", help="Write bench results (timings, ratings, reference score) into the registry's entries.",
        description="Write each benchmarked model's `measured` record from a `foundry-gateway bench` results file "
                    "into the registry. Only those entries change; everything else in the file stays as it was.")
    p.add_argument("results", metavar="RESULTS.json", help="a results file written by `foundry-gateway bench`")
    p.add_argument("--file", help="registry file (default: GATEWAY_REGISTRY_PATH or models.json)")
    p.set_defaults(func=cmd_registry_annotate)

    p = command("compile", "Compile a local Hugging Face checkpoint into a Foundry Local model and register it.",
                cmd_compile)
    p.add_argument("hf_folder", metavar="HF_FOLDER", help="a Hugging Face checkpoint folder (config.json, weights, "
                                                         "tokenizer)")
    p.add_argument("--name", required=True, help="the registry name apps will use")
    p.add_argument("--precision", choices=["int4", "fp16", "fp32"], default="int4", help="weights (default int4)")
    p.add_argument("--execution-provider", choices=["cpu", "cuda", "dml", "webgpu", "NvTensorRtRtx"], default="cpu",
                   help="where it runs (default cpu)")
    p.add_argument("--task", action="append", help="task it serves (repeatable; default chat; embeddings also "
                                                    "exposes hidden states)")
    p.add_argument("--out", help="output folder (default: models/NAME beside the registry)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--python", help="a Python with the model builder (default: $FOUNDRY_GATEWAY_BUILDER_PYTHON, "
                                    ".venv-model, or this one)")
    p.add_argument("--file", help="registry file (default: GATEWAY_REGISTRY_PATH or models.json)")

    p = command("pull", "Download a catalog model through Foundry Local (needs internet).", cmd_pull)
    p.add_argument("name", help="catalog alias, e.g. phi-4-mini")

    cache = sub.add_parser("cache", help="What Foundry Local's model cache holds; remove from it.",
                           description="Foundry Local's model cache: local model folders registered with the "
                                       "runtime and catalog downloads, their size, and whether they are loaded.")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    p = cache_sub.add_parser("ls", help="List the cached models (size on disk, registry entry, loaded).")
    p.add_argument("--gateway", help="the running gateway to ask what is loaded (default: this host's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cache_ls)
    p = cache_sub.add_parser("rm", help="Remove a model from the cache (refuses a loaded one without --force).")
    p.add_argument("name", help="upstream id, alias or registry name")
    p.add_argument("--force", action="store_true", help="remove even if the runtime has it loaded")
    p.add_argument("--gateway", help="the running gateway to ask what is loaded (default: this host's)")
    p.set_defaults(func=cmd_cache_rm)
    p = cache_sub.add_parser("dir", help="Print the cache directory.")
    p.set_defaults(func=cmd_cache_dir, gateway=None)

    p = command("settings", "Show the settings in force, or the settings table.", cmd_settings)
    p.add_argument("--markdown", action="store_true", help="print the README settings table")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    benchmark.add_parser(sub)
    keys_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ValidationError as exc:
        for detail in exc.errors():
            name = f"GATEWAY_{'.'.join(str(p) for p in detail['loc']).upper()}"
            message = str(detail["msg"]).removeprefix("Value error, ")
            err.print(f"[red]error[/] {name}: {message}", highlight=False)
        return 2
    except RegistryError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/] {problem}", highlight=False)
        return 1
    except GatewayError as exc:
        err.print(f"[red]error[/] {exc.message}", highlight=False)
        return 1
    except KeysError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/] {problem}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
