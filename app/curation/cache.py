"""``foundry-gateway models cache ls|rm|dir``: what Foundry Local's model cache holds, and removing from it.

Two kinds of entries: local model folders registered with the runtime (bring your own model — the registry's
``path`` entries, or ``foundry-gateway compile``), read from Foundry Local's own local catalog through its SDK;
and catalog downloads, folders of ONNX Runtime GenAI models (``genai_config.json``) under the cache directory.
Each row says how big it is on disk, which registry entry uses it, and whether the runtime has it loaded (asked
of the running gateway: nothing else knows).

Removing a local registration forgets it in the runtime and keeps the folder (it is the user's); removing a
download deletes its folder. A loaded model is refused unless ``--force``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.core.registry import Registry, alias_of

GENAI_CONFIG = "genai_config.json"


@dataclass
class CachedModel:
    id: str
    alias: str
    version: int | None
    kind: str  # "local folder" (a registration) or "download"
    path: str  # a download: the model's own folder under the cache (what `rm` deletes)
    size_bytes: int
    registered_as: str | None  # the registry entry that uses it
    loaded: bool | None  # None: unknown (the gateway could not be asked)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_on_disk(path: Path) -> int:
    """Bytes of the files under ``path`` (symbolic links not followed)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(folder) / name).lstat().st_size
    return total


def local_catalog(cache_dir: Path) -> Any:
    """Foundry Local's local catalog for this cache directory (the SDK, in this process)."""
    from foundry_local_sdk import CatalogType

    from app.upstream.catalog import manager

    return manager(cache_dir).get_catalog(CatalogType.LOCAL)


def list_cache(cache_dir: Path, registry: Registry, loaded: set[str] | None) -> list[CachedModel]:
    """Everything in the cache, local registrations first. ``loaded``: upstream ids the runtime has loaded."""
    rows: list[CachedModel] = []
    seen: set[Path] = set()
    for model in local_catalog(cache_dir).get_cached_models():
        path = Path(model.get_path())
        seen.add(path.resolve())
        rows.append(CachedModel(model.id, model.alias, getattr(model.info, "version", None), "local folder",
                                str(path), size_on_disk(path), _registered(registry, model.id, path),
                                None if loaded is None else model.id in loaded))
    downloads: dict[Path, tuple[str, int | None]] = {}
    for config in sorted(cache_dir.rglob(GENAI_CONFIG)):
        if config.parent.resolve() in seen:
            continue
        root, model_id, version = _download(config.parent, cache_dir)
        downloads.setdefault(root, (model_id, version))  # variants of one download are one row
    for root, (model_id, version) in downloads.items():
        rows.append(CachedModel(model_id, alias_of(model_id), version, "download", str(root), size_on_disk(root),
                                _registered(registry, model_id, root),
                                None if loaded is None else model_id in loaded))
    return rows


def remove(cache_dir: Path, row: CachedModel) -> str:
    """Remove one row; returns what was done, in words."""
    if row.kind == "local folder":
        local_catalog(cache_dir).unregister_model(row.id)
        return f"unregistered {row.id} (its folder {row.path} is kept)"
    folder = Path(row.path).resolve()
    if folder == cache_dir.resolve() or cache_dir.resolve() not in folder.parents:
        raise ValueError(f"{folder} is not a model folder inside the cache {cache_dir}: not deleting it "
                         "(remove it by hand if you mean to)")
    shutil.rmtree(folder)
    return f"deleted {folder} ({row.size_bytes / 1024**2:.1f} MiB)"


def find(rows: list[CachedModel], name: str, registry: Registry) -> CachedModel | None:
    """The row a user means: an upstream id, an alias, or a registry name (or one of its aliases)."""
    entry = registry.lookup(name)
    for row in rows:
        if name in (row.id, row.alias) or (entry is not None and row.registered_as == entry.name):
            return row
    return None


def _registered(registry: Registry, model_id: str, path: Path) -> str | None:
    resolved = path.resolve()
    for entry in registry:
        if entry.upstream_id == model_id or (entry.path is not None and entry.path.resolve() == resolved):
            return entry.name
    for entry in registry:
        if entry.upstream_id is None and entry.name == alias_of(model_id):
            return entry.name
    return None


_VERSIONED = re.compile(r"^(?P<name>.+)-(?P<version>\d+)$")


def _download(folder: Path, cache_dir: Path) -> tuple[Path, str, int | None]:
    """A download's own folder, id and version. Foundry Local keeps ``<publisher>/<id>-<version>/<variant>/``
    (e.g. ``…/Phi-4-mini-instruct-generic-cpu-4/cpu-int4-rtn-block-32-acc-level-4``): the versioned folder is
    the model; a folder without one is its own model."""
    parts = folder.relative_to(cache_dir).parts
    for depth in range(len(parts) - 1, -1, -1):
        found = _VERSIONED.match(parts[depth])
        if found:
            return cache_dir.joinpath(*parts[:depth + 1]), f"{found['name']}:{found['version']}", int(found["version"])
    return folder, folder.name, None
