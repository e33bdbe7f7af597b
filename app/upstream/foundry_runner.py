"""The managed Foundry Local runtime: a child process that the gateway starts and supervises.

Why a child process: ``FoundryLocalManager`` is a per-process singleton around a native runtime, and
a crash or a hang in it must not take the gateway down; a separate process can be health-checked,
killed and restarted, and with several gateway workers there is still one runtime.

  python -m app.upstream.foundry_runner --cache-dir DIR --port 0 --models-file SPEC.json

SPEC.json lists ``{"model_id", "path", "task"}`` to register in the local catalog (idempotently). Once
the web service listens, one JSON line goes to stdout:
``{"event": "ready", "url": ..., "pid": ..., "registered": [...], "reused": [...], "errors": [...]}``.
The process then serves until SIGTERM/SIGINT, or until the gateway that started it is gone, and shuts
the runtime down cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

# Offline, the runtime's telemetry upload would retry DNS lookups; with a CI variable set it logs
# "1DS upload disabled" and makes no outbound connection (see the shared Foundry Local notes).
os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")
os.environ.setdefault("CI", "true")


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def register(catalog: Any, specs: list[dict[str, str]]) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """Register local model folders; an id registered before (it persists in the cache) is reused."""
    from foundry_local_sdk import ModelInfoBuilder

    registered: list[str] = []
    reused: list[str] = []
    errors: list[dict[str, str]] = []
    known = {model.id: model for model in catalog.list_models()}
    for spec in specs:
        model_id, path = spec["model_id"], str(Path(spec["path"]).resolve())
        existing = known.get(model_id)
        if existing is not None:
            try:
                old_path = existing.get_path()
            except Exception:  # the native layer raises its own types
                old_path = path
            if os.path.realpath(old_path) == path:
                reused.append(model_id)
                continue
            catalog.unregister_model(model_id)  # same id, new folder: the registry wins
        if not (Path(path) / "genai_config.json").exists():
            errors.append({"model_id": model_id, "message": f"{path} has no genai_config.json"})
            continue
        try:
            with ModelInfoBuilder() as metadata:
                metadata.set_string_property("task", spec.get("task") or "chat-completion")
                catalog.register_model(model_path=path, model_id=model_id, metadata=metadata)
            registered.append(model_id)
        except Exception as exc:
            errors.append({"model_id": model_id, "message": str(exc)})
    return registered, reused, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models-file", type=Path)
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        from foundry_local_sdk import CatalogType, Configuration, FoundryLocalManager

        args.cache_dir.mkdir(parents=True, exist_ok=True)
        FoundryLocalManager.initialize(Configuration(
            app_name="foundry-gateway", model_cache_dir=str(args.cache_dir.resolve()),
            web=Configuration.WebService(urls=f"http://{args.host}:{args.port}"),
            disable_nonessential_telemetry=True,
        ))
        manager = FoundryLocalManager.instance
        assert manager is not None
        specs = json.loads(args.models_file.read_text()) if args.models_file else []
        registered, reused, errors = register(manager.get_catalog(CatalogType.LOCAL), specs)
        manager.start_web_service()
        url = (manager.urls or [""])[0].rstrip("/")
    except ImportError as exc:
        emit({"event": "error", "message": f"{exc}: install the runtime with pip install 'foundry-gateway[foundry]'"})
        return 1
    except Exception as exc:
        emit({"event": "error", "message": f"{exc.__class__.__name__}: {exc}"})
        return 1
    emit({"event": "ready", "url": url, "pid": os.getpid(), "registered": registered, "reused": reused,
          "errors": errors})
    parent = os.getppid()
    while not stop.wait(0.5):
        if os.getppid() != parent:  # the gateway died without stopping us (SIGKILL, OOM): do not linger
            break
    try:
        manager.stop_web_service()
    finally:
        manager.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
