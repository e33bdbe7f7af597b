"""``foundry-gateway models cache ls|rm|dir`` (what Foundry Local's model cache holds, and removing from it) and
``foundry-gateway pull NAME`` (a catalog model into the cache). The listing is ``app.curation.cache``; what is
loaded is asked of the running gateway, which alone knows. (``foundry-gateway cache`` is the response cache:
``app.cli.cache``.)"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from app.cli import output, remote
from app.cli.models import settings_from
from app.cli.output import CliError, styled, yes_no
from app.core.registry import Registry, load_registry
from app.core.settings import Settings
from app.upstream import catalog


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pull", help="Download a catalog model through Foundry Local (needs internet).",
                       description="Download a catalog model through Foundry Local (needs internet).")
    p.add_argument("name", help="catalog alias, e.g. phi-4-mini")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_pull)


def add_actions(models_sub: Any) -> None:
    """``models cache ACTION``: under ``models``, so "cache" alone means the response cache."""
    cache = models_sub.add_parser("cache", help="What Foundry Local's model cache holds; remove from it.",
                                  description="Foundry Local's model cache: local model folders registered with the "
                                              "runtime and catalog downloads, their size, and whether they are "
                                              "loaded.")
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    p = actions.add_parser("ls", help="List the cached models (size on disk, registry entry, loaded).")
    remote.add_options(p, gateway_help="the running gateway to ask what is loaded (default: this host's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ls)
    p = actions.add_parser("rm", help="Remove a model from the cache (refuses a loaded one without --force).")
    p.add_argument("name", help="upstream id, alias or registry name")
    p.add_argument("--force", action="store_true", help="remove even if the runtime has it loaded")
    remote.add_options(p, gateway_help="the running gateway to ask what is loaded (default: this host's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_rm)
    p = actions.add_parser("dir", help="Print the cache directory.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_dir)


def cmd_pull(args: argparse.Namespace) -> int:
    cache_dir = settings_from(args).foundry_cache_dir
    catalog.runtime_output_to(cache_dir / "runtime-cli.log")  # before a console takes the terminal
    console = Console(stderr=True, markup=False, highlight=False)
    try:
        with console.status(f"Looking up '{args.name}' in Foundry Local's catalog…"):
            model = catalog.find(args.name, cache_dir)
        if not model.is_cached:
            with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                          console=console, disable=not console.is_terminal) as progress:
                task = progress.add_task(f"pull {model.id}", total=100.0)
                catalog.download(model, lambda pct: progress.update(task, completed=pct))
    except catalog.CatalogError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        output.note(styled("cancelled", "yellow"))
        return 130
    if args.json:
        output.json_out({"model": model.id, "cache_dir": str(cache_dir)})
    else:
        output.say(styled("pulled", "green"), f" {model.id} into {cache_dir}")
    return 0


def _context(args: argparse.Namespace) -> tuple[Settings, Registry, set[str] | None, str]:
    """Settings, registry, what the runtime has loaded (None: no gateway could be asked) and the gateway asked."""
    settings = settings_from(args)
    url = remote.normalize(args.gateway) if args.gateway else remote.local_gateway(settings)
    key = remote.api_key(args) or settings.admin_api_key or next(iter(settings.all_api_keys), None)
    loaded: set[str] | None
    try:
        answer = httpx.get(f"{url}/v1/models", timeout=10, headers={"Authorization": f"Bearer {key}"} if key else {})
        answer.raise_for_status()
        loaded = {str(r["upstream_id"]) for r in answer.json()["data"] if r.get("loaded")}
    except httpx.ConnectError:  # no gateway running there, so no runtime of ours has anything loaded
        loaded = set() if args.gateway is None else None
    except (httpx.HTTPError, ValueError, KeyError):  # it answered, but not with its models: unknown
        loaded = None
    return settings, load_registry(settings.registry_path), loaded, url


def cmd_dir(args: argparse.Namespace) -> int:
    folder = str(settings_from(args).foundry_cache_dir.resolve())
    if args.json:
        output.json_out({"cache_dir": folder})
    else:
        output.say(folder)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from app.curation.cache import list_cache

    settings, registry, loaded, url = _context(args)
    cache_dir = settings.foundry_cache_dir.resolve()
    rows = list_cache(cache_dir, registry, loaded)
    if args.json:
        output.json_out({"cache_dir": str(cache_dir), "gateway": url if loaded is not None else None,
                         "models": [row.as_dict() for row in rows]})
        return 0
    output.table(["model", "kind", "version", "size", "registered as", "loaded"],
                 [[row.id, row.kind, "–" if row.version is None else str(row.version),
                   f"{row.size_bytes / 1024**2:.1f} MiB", row.registered_as or "–", yes_no(row.loaded)]
                  for row in rows], title=f"Foundry Local cache — {cache_dir}", right=("size",))
    if loaded is None:
        output.note(styled(f"loaded: unknown (the gateway at {url} could not be asked; pass --gateway URL and "
                           "--api-key)", "dim"))
    elif not loaded and not any(row.loaded for row in rows):
        output.note(styled(f"loaded: no gateway answered at {url}, so nothing is loaded through it", "dim"))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from app.curation.cache import find, list_cache, remove

    settings, registry, loaded, _ = _context(args)
    cache_dir = settings.foundry_cache_dir.resolve()
    row = find(list_cache(cache_dir, registry, loaded), args.name, registry)
    if row is None:
        raise CliError(f"'{args.name}' is not in the cache ({cache_dir}); see `foundry-gateway models cache ls`")
    if row.loaded is not False and not args.force:
        why = "is loaded in the running runtime" if row.loaded else \
            "may be loaded: the gateway could not be asked (pass --gateway URL and --api-key)"
        raise CliError(f"{row.id} {why}; unload it first, or pass --force (the runtime keeps it in memory until it "
                       "unloads)")
    try:
        done = remove(cache_dir, row)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        output.json_out({"removed": row.as_dict(), "detail": done})
    else:
        output.say(done)
    if row.registered_as and row.kind == "local folder":
        output.note(styled(f"models.json still lists '{row.registered_as}' with this folder: the managed runtime "
                           "registers it again at its next start (remove the entry to forget it for good).", "dim"))
    return 0
