"""``foundry-gateway serve``: the gateway under uvicorn, in front of a managed Foundry Local unless ``--upstream``
names a running one. Settings are checked before anything binds a port: a bad registry or a worker count that
cannot hold the limits is one line and an exit status, not a half-started server."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import socket
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
from app.upstream.client import transport_problem
from app.upstream.profile import PROFILES


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
    problem = tracing.problem() or transport_problem(settings)
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
    taken = port_taken(settings.host, settings.port)
    if taken:
        output.error(taken)
        return 2
    loop = event_loop(args.loop or settings.loop)
    # plain text, one line: never wrapped, in a terminal, a pipe or a log file
    sys.stderr.write(f"foundry-gateway {__version__} on http://{settings.host}:{settings.port} "
                     f"(upstream: {settings.upstream_mode}, registry: {settings.registry_path}, loop: {loop}; "
                     f"{banner_features(settings)})\n")
    sys.stderr.flush()
    uvicorn.run(
        "app.server.app:create_app", factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        loop=loop, http=GuardedProtocol, log_level="warning", access_log=False, proxy_headers=False,
        timeout_graceful_shutdown=round(settings.shutdown_grace) or None, timeout_keep_alive=30,
    )
    return 0


def port_taken(host: str, port: int) -> str | None:
    """Why the gateway cannot listen there, said before anything starts (uvicorn says it after its start-up)."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if sys.platform != "win32":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
                return (f"port {port} on {host} is taken (another gateway, or another program, listens there): pass "
                        "--port N or set GATEWAY_PORT")
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def banner_features(settings: Settings) -> str:
    """What is on, for the start-up line: keys, the response cache, tracing, the state store."""
    if settings.keys_file is not None:
        keys = f"team keys from {settings.keys_file}"
    elif settings.all_api_keys:
        keys = f"{len(settings.all_api_keys)} API key{'s' if len(settings.all_api_keys) != 1 else ''}"
    else:
        keys = "no keys (open)"
    cache = "off" if settings.cache == "off" else \
        f"{settings.cache} ({'Redis' if settings.redis_url else 'this process'})"
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return (f"keys: {keys}; cache: {cache}; tracing: {f'to {traces}' if tracing.enabled() else 'off'}; state: "
            f"{'Redis' if settings.redis_url else settings.state_dir}")


def workers_problem(settings: Settings, model_limits: list[int]) -> str | None:
    """Why ``settings.workers`` processes would be wrong here, or None. Each worker enforces 1/N of every
    limit, so together they never exceed it; what cannot be split that way is refused."""
    workers = settings.workers
    if settings.upstream_mode == "managed":
        return "several workers need an external upstream (each worker would start its own runtime)."
    if PROFILES[settings.upstream_kind].manages_models:
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

