"""Foundry Local's catalogs through its SDK: the online catalog (``foundry-gateway pull NAME`` downloads a catalog
model into the cache) and the local one (``foundry-gateway models cache`` reads the registrations of local folders).

Offline, the online catalog lists nothing after a few seconds of retries, so a lookup says so plainly instead of
failing deep in the runtime. The SDK runs in this process (it is a per-process singleton; the CLI owns it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

OFFLINE_HINT = (
    "Foundry Local's online catalog is not reachable from this machine, so catalog models cannot be "
    "downloaded here. The gateway keeps routing to the models that are available (see `foundry-gateway "
    "models`); register a local model folder with `foundry-gateway registry add NAME --path DIR`."
)


class CatalogError(Exception):
    """The catalog cannot give what was asked (not installed, unreachable, not there): one line for the user."""


def manager(cache_dir: Path) -> Any:
    os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")
    runtime_output_to(cache_dir / "runtime-cli.log")
    try:
        from foundry_local_sdk import Configuration, FoundryLocalManager
    except ImportError:
        raise CatalogError("foundry-local-sdk is not installed: pip install 'foundry-gateway[foundry]'") from None
    if FoundryLocalManager.instance is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        FoundryLocalManager.initialize(Configuration(
            app_name="foundry-gateway", model_cache_dir=str(cache_dir.resolve()),
            disable_nonessential_telemetry=True,
        ))
    return FoundryLocalManager.instance


def runtime_output_to(log: Path) -> None:
    """From now on, for the rest of this process, what the runtime's native layer writes to the process's stdout
    and stderr (its C++ retries, ``[warning] …``, some from threads that outlive the call) goes to ``log``; Python's
    ``sys.stdout`` and ``sys.stderr`` keep the terminal, so the user sees the command's own one-line answer."""
    global _redirected
    if _redirected or sys.platform == "win32":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    log.parent.mkdir(parents=True, exist_ok=True)
    sink = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.dup(1), os.dup(2)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    sys.stdout = os.fdopen(terminal[0], "w", buffering=1, encoding=sys.stdout.encoding, errors="replace")
    sys.stderr = os.fdopen(terminal[1], "w", buffering=1, encoding=sys.stderr.encoding, errors="replace")
    _redirected = True


_redirected = False


def find(name: str, cache_dir: Path) -> Any:
    """The catalog model ``name`` (an SDK model object with ``id``, ``is_cached``, ``download``)."""
    found = manager(cache_dir)
    from foundry_local_sdk import CatalogType

    try:
        model = found.get_catalog(CatalogType.PUBLIC).get_model(name)
    except Exception as exc:  # the native layer raises its own exception types
        raise CatalogError(f"catalog lookup failed: {_first_line(exc)}. {OFFLINE_HINT}") from None
    if model is None:
        raise CatalogError(f"'{name}' is not in the catalog (or the catalog is unreachable). {OFFLINE_HINT}")
    return model


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else exc.__class__.__name__




def download(model: Any, progress: Callable[[float], None]) -> None:
    """Download a catalog model into the cache, reporting the percentage done."""
    try:
        model.download(progress_callback=progress, cancel_event=None)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise CatalogError(f"download failed: {_first_line(exc)}. {OFFLINE_HINT}") from None
