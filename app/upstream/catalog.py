"""Foundry Local's catalogs through its SDK: the online catalog (``foundry-gateway pull NAME`` downloads a catalog
model into the cache) and the local one (``foundry-gateway cache`` reads the registrations of local folders).

Offline, the online catalog lists nothing after a few seconds of retries, so a lookup says so plainly instead of
failing deep in the runtime. The SDK runs in this process (it is a per-process singleton; the CLI owns it).
"""

from __future__ import annotations

import os
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


def find(name: str, cache_dir: Path) -> Any:
    """The catalog model ``name`` (an SDK model object with ``id``, ``is_cached``, ``download``)."""
    found = manager(cache_dir)
    from foundry_local_sdk import CatalogType

    try:
        model = found.get_catalog(CatalogType.PUBLIC).get_model(name)
    except Exception as exc:  # the native layer raises its own exception types
        raise CatalogError(f"catalog lookup failed: {exc}. {OFFLINE_HINT}") from None
    if model is None:
        raise CatalogError(f"'{name}' is not in the catalog (or the catalog is unreachable). {OFFLINE_HINT}")
    return model


def download(model: Any, progress: Callable[[float], None]) -> None:
    """Download a catalog model into the cache, reporting the percentage done."""
    try:
        model.download(progress_callback=progress, cancel_event=None)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise CatalogError(f"download failed: {exc}. {OFFLINE_HINT}") from None
