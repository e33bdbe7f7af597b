"""``foundry-gateway serve``: the gateway under uvicorn, in front of a managed Foundry Local unless ``--upstream``
names a running one. Settings are checked before anything binds a port: a bad registry or a worker count that
cannot hold the limits is one line and an exit status, not a half-started server."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from app import __version__
from app.cli import output
from app.core import tracing
from app.core.portable import event_loop
from app.core.registry import load_registry
from app.core.settings import Settings, load_settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="Run the gateway (managed Foundry Local unless --upstream is given).",
                       description="Run the gateway (managed Foundry Local unless --upstream is given).")
    p.add_argument("--host", help="listen address (GATEWAY_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (GATEWAY_PORT, default 8080)")
    p.add_argument("--workers", type=int, help="worker processes (needs an external upstream)")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"],
                   help="event loop (GATEWAY_LOOP, default auto: uvloop where installed, not on Windows)")
    p.add_argument("--upstream", help="URL of a running upstream (external mode)")
    p.add_argument("--registry", help="registry file (default models.json)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.server.protocol import GuardedProtocol

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
    problem = tracing.problem()
    if problem:
        output.error(problem)
        return 2
    if settings.workers > 1:
        problem = workers_problem(settings, [e.max_concurrency for e in registry if e.max_concurrency])
        if problem:
            output.error(f"--workers {settings.workers} refused: {problem}")
            return 2
        metrics_dir = settings.metrics_dir or Path(tempfile.gettempdir()) / f"foundry-gateway-metrics-{os.getpid()}"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # stale files from a previous run would be summed in
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    loop = event_loop(args.loop or settings.loop)
    # plain text, one line: never wrapped, in a terminal, a pipe or a log file
    sys.stderr.write(f"foundry-gateway {__version__} on http://{settings.host}:{settings.port} "
                     f"(upstream: {settings.upstream_mode}, registry: {settings.registry_path}, loop: {loop})\n")
    sys.stderr.flush()
    uvicorn.run(
        "app.server.app:create_app", factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        loop=loop, http=GuardedProtocol, log_level="warning", access_log=False, proxy_headers=False,
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
    limits = {"GATEWAY_MODEL_CONCURRENCY": settings.model_concurrency, "GATEWAY_MAX_IN_FLIGHT": settings.max_in_flight,
              **{f"a registry max_concurrency of {n}": n for n in model_limits}}
    for name, limit in limits.items():
        if limit < workers:
            return (f"{name} ({limit}) cannot be split over {workers} workers: each enforces its share of every "
                    f"limit, and a share below 1 would let the workers together exceed it. Use at most {limit} "
                    f"workers or raise the limit.")
    return None

