"""``foundry-gateway compile``: a local Hugging Face checkpoint → a Foundry Local model folder → the registry,
with the checks before the work (architecture, disk, RAM) and the builder's progress while it runs. The work is
``app.curation.compile``; the entry is appended to ``models.json`` the way ``registry add`` does it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from app.cli import output
from app.cli.output import CliError, styled
from app.cli.registry import added, registry_path
from app.core.registry import load_registry
from app.curation.compile import PRECISIONS, PROVIDERS


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compile", help="Compile a local Hugging Face checkpoint into a Foundry Local model and "
                       "register it.", description="Compile a local Hugging Face checkpoint into a Foundry Local "
                       "model folder (onnxruntime-genai's model builder) and add it to the registry.")
    p.add_argument("hf_folder", metavar="HF_FOLDER", help="a Hugging Face checkpoint folder (config.json, weights, "
                                                         "tokenizer)")
    p.add_argument("--name", required=True, help="the registry name apps will use")
    p.add_argument("--precision", choices=PRECISIONS, default="int4", help="weights (default int4)")
    p.add_argument("--execution-provider", choices=PROVIDERS, default="cpu", help="where it runs (default cpu)")
    p.add_argument("--task", action="append", help="task it serves (repeatable; default chat; embeddings also "
                                                    "exposes hidden states)")
    p.add_argument("--out", help="output folder (default: models/NAME beside the registry)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--python", help="a Python with the model builder (default: $FOUNDRY_GATEWAY_BUILDER_PYTHON, "
                                    ".venv-model, or this one)")
    p.add_argument("--file", help="registry file (default: GATEWAY_REGISTRY_PATH or models.json)")
    p.add_argument("--json", action="store_true", help="print the entry added as JSON")
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    import psutil

    from app.curation import compile as builder

    tasks = args.task or ["chat"]
    path = registry_path(args.file)
    registry = load_registry(path) if path.exists() else None
    if registry is not None and registry.lookup(args.name) is not None:
        raise CliError(f"'{args.name}' is already in {path}; pick another --name")
    hf_dir = Path(args.hf_folder)
    folder = Path(args.out) if args.out else path.parent / "models" / args.name
    console = Console(stderr=True, markup=False, highlight=False)
    try:
        builder.check_target(args.name, hf_dir, folder, path, force=args.force)
        python = builder.builder_python(args.python)
        with console.status("Checking the checkpoint and the model builder…"):
            supported = builder.supported_architectures(python)
            planned = builder.plan(hf_dir, args.precision, supported)
            builder.check_room(planned, folder, psutil.virtual_memory().available)
        output.note(styled("✓", "green"), f" {planned.architecture}, ~{planned.parameters / 1e6:.1f} M parameters → "
                    f"{args.precision} for {args.execution_provider}: about {_size(planned.output_bytes)} out, "
                    f"{_size(planned.disk_bytes)} of disk and {_size(planned.ram_bytes)} of RAM while building")
        started = time.perf_counter()
        extra = {"include_hidden_states": "true"} if "embeddings" in tasks else None
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True, disable=not console.is_terminal) as progress:
            step = progress.add_task("model builder starting…")
            builder.build_folder(hf_dir, folder.resolve(), precision=args.precision, provider=args.execution_provider,
                                 python=python, extra_options=extra,
                                 on_line=lambda line: progress.update(step, description=line[:100]))
        context = builder.set_context_length(folder, planned.context_length)
    except builder.CompileError as exc:
        raise CliError(str(exc)) from None
    size = builder.folder_size(folder)
    output.note(styled("✓", "green"), f" built {folder} ({_size(size)}) in {time.perf_counter() - started:.0f}s")
    variant = "cpu" if args.execution_provider == "cpu" else "gpu"
    item: dict[str, Any] = {
        "name": args.name, "task": tasks if len(tasks) > 1 else tasks[0],
        "min_ram_gb": max(0.1, round(size * 1.3 / 1024**3, 2)), "upstream_id": f"{args.name}-generic-{variant}:1",
        "path": _relative(folder.resolve(), path.resolve().parent),
        "notes": f"compiled from {hf_dir.name} ({planned.architecture}, {args.precision}, {args.execution_provider})",
    }
    if context:
        item["context_length"] = context
    return added(path, item, as_json=args.json)


def _relative(folder: Path, base: Path) -> str:
    """The folder as the registry names it: relative to the registry's own folder when it is inside it."""
    return str(folder.relative_to(base)) if folder.is_relative_to(base) else str(folder)


def _size(value: float) -> str:
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 / 10 else f"{value / 1024**2:.1f} MiB"
