"""``foundry-gateway pull NAME``: download a catalog model into Foundry Local's cache.

Catalog models (phi-4-mini, …) come from Foundry Local's online catalog. Offline, the catalog lists
nothing after a few seconds of retries, so the command says so plainly instead of failing deep in the
runtime. Runs the SDK in this process (it is a per-process singleton; the CLI owns the process).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

OFFLINE_HINT = (
    "Foundry Local's online catalog is not reachable from this machine, so catalog models cannot be "
    "downloaded here. The gateway keeps routing to the models that are available (see `foundry-gateway "
    "models`); register a local model folder with `foundry-gateway registry add NAME --path DIR`."
)


def _manager(cache_dir: Path) -> Any:
    os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")
    from foundry_local_sdk import Configuration, FoundryLocalManager

    if FoundryLocalManager.instance is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        FoundryLocalManager.initialize(Configuration(
            app_name="foundry-gateway", model_cache_dir=str(cache_dir.resolve()),
            disable_nonessential_telemetry=True,
        ))
    return FoundryLocalManager.instance


def pull_model(name: str, *, cache_dir: Path, console: Console) -> int:
    try:
        manager = _manager(cache_dir)
        from foundry_local_sdk import CatalogType
    except ImportError:
        console.print("[red]error[/] foundry-local-sdk is not installed: pip install 'foundry-gateway[foundry]'")
        return 1
    with console.status(f"Looking up '{name}' in Foundry Local's catalog…"):
        try:
            catalog = manager.get_catalog(CatalogType.PUBLIC)
            model = catalog.get_model(name)
        except Exception as exc:  # the native layer raises its own exception types
            console.print(f"[red]error[/] catalog lookup failed: {exc}\n{OFFLINE_HINT}")
            return 1
    if model is None:
        console.print(f"[red]error[/] '{name}' is not in the catalog (or the catalog is unreachable).\n{OFFLINE_HINT}")
        return 1
    if model.is_cached:
        console.print(f"[green]already cached[/] {model.id}")
        return 0
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(f"pull {model.id}", total=100.0)
        try:
            model.download(progress_callback=lambda pct: progress.update(task, completed=pct), cancel_event=None)
        except KeyboardInterrupt:
            console.print("[yellow]cancelled[/]")
            return 130
        except Exception as exc:
            console.print(f"[red]error[/] download failed: {exc}\n{OFFLINE_HINT}")
            return 1
        progress.update(task, completed=100.0)
    console.print(f"[green]pulled[/] {model.id} into {cache_dir}")
    return 0
