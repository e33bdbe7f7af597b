"""``foundry-gateway registry validate|add|annotate``: the model registry (``models.json``), checked the way the
gateway loads it, and edited the way a person would — only the entry that changes is written, every other byte
(comments in ``x-``/``_`` fields, layout, ``8`` staying ``8``) stays as it was."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from app.cli import output
from app.cli.output import CliError, styled
from app.core.registry import FIELDS, RegistryError, load_registry
from app.core.registry_file import append_entry
from app.core.settings import load_settings
from app.curation import bench


def add_parser(sub: Any) -> None:
    reg = sub.add_parser("registry", help="Validate or edit the model registry.",
                         description="Validate or edit the model registry (models.json).")
    actions = reg.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    p = actions.add_parser("validate", help="Check a registry file: every problem in one pass, exit 1 if any.",
                           description="Check a registry file as the gateway loads it, and that every local "
                           "model folder (`path`) exists: every problem in one pass, exit 1 if any.")
    p.add_argument("file", nargs="?", help="registry file (default: GATEWAY_REGISTRY_PATH or models.json)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_validate)
    p = actions.add_parser("add", help="Append a validated entry to the registry (the rest of the file untouched).",
                           epilog="fields: " + "; ".join(f"{k}: {v}" for k, v in FIELDS.items()))
    p.add_argument("name", help="model name apps use")
    p.add_argument("--task", action="append", required=True, help="task it serves (repeatable)")
    p.add_argument("--min-ram-gb", type=float, required=True, help="GiB of RAM it needs")
    p.add_argument("--notes")
    p.add_argument("--alias", action="append", help="another name (repeatable)")
    p.add_argument("--upstream-id", help="exact upstream id, e.g. name-generic-cpu:1")
    p.add_argument("--priority", type=int)
    p.add_argument("--context-length", type=int)
    p.add_argument("--default-max-tokens", type=int)
    p.add_argument("--path", help="local ONNX Runtime GenAI model folder (must exist: `compile` makes one)")
    p.add_argument("--capabilities", help="what it can do, comma-separated: chat, tools, embeddings, transcription, "
                   "vision, json_schema (default: from its task)")
    p.add_argument("--pinned", action="store_true", help="never unloaded by the gateway")
    p.add_argument("--parse-tool-calls", action="store_true",
                   help="turn <tool_call>{…}</tool_call> text the model writes into OpenAI tool_calls")
    p.add_argument("--file", help="registry file (default: GATEWAY_REGISTRY_PATH or models.json)")
    p.add_argument("--json", action="store_true", help="print the entry added as JSON")
    p.set_defaults(func=cmd_add)
    p = actions.add_parser(
        "annotate", help="Write bench results (timings, ratings, reference score) into the registry's entries.",
        description="Write each benchmarked model's `measured` record from a `foundry-gateway bench` results file "
                    "into the registry. Only those entries change; everything else in the file stays as it was.")
    p.add_argument("results", metavar="RESULTS.json", help="a results file written by `foundry-gateway bench`")
    p.add_argument("--file", help="registry file (default: GATEWAY_REGISTRY_PATH or models.json)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_annotate)


def registry_path(file: str | None) -> Path:
    return Path(file) if file else load_settings().registry_path


def problems_of(path: Path) -> tuple[list[str], Any]:
    """Every problem of a registry file in one pass — what loading it finds, and local folders that are missing —
    and the registry when it loads."""
    problems: list[str] = []
    registry = None
    try:
        registry = load_registry(path)
    except RegistryError as exc:
        problems += exc.problems
    try:
        items = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return problems, registry
    if isinstance(items, dict):
        items = items.get("models")
    for position, item in enumerate(items if isinstance(items, list) else [], start=1):
        folder = item.get("path") if isinstance(item, dict) else None
        if not isinstance(folder, str):
            continue
        where = f"{path.name}: entry {position} (\"{item.get('name')}\")"
        resolved = (path.parent / folder).resolve()
        if not resolved.is_dir():
            problems.append(f"{where}: path {folder} does not exist (resolved to {resolved})")
        elif not (resolved / "genai_config.json").is_file():
            problems.append(f"{where}: path {folder} has no genai_config.json: not an ONNX Runtime GenAI model "
                            "folder (foundry-gateway compile makes one)")
    return problems, registry


def cmd_validate(args: argparse.Namespace) -> int:
    path = registry_path(args.file)
    problems, registry = problems_of(path)
    if args.json:
        report: dict[str, Any] = {"valid": not problems, "file": str(path), "problems": problems}
        if registry is not None:
            report.update(models=len(registry), tasks=list(registry.tasks))
        output.json_out(report)
        return 1 if problems else 0
    for problem in problems:
        output.error(problem)
    if problems:
        return 1
    output.say(styled("ok", "green"), f" {path}: {len(registry)} models, tasks: {', '.join(registry.tasks)}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    path = registry_path(args.file)
    item: dict[str, Any] = {"name": args.name, "task": args.task if len(args.task) > 1 else args.task[0],
                            "min_ram_gb": args.min_ram_gb}
    for key in ("notes", "upstream_id", "priority", "context_length", "default_max_tokens", "path"):
        value = getattr(args, key)
        if value is not None:
            item[key] = value
    if args.alias:
        item["aliases"] = args.alias
    if args.capabilities:
        item["capabilities"] = [c.strip() for c in args.capabilities.split(",") if c.strip()]
    for flag in ("pinned", "parse_tool_calls"):
        if getattr(args, flag):
            item[flag] = True
    if args.path is not None:
        folder = (path.parent / args.path).resolve()
        if not folder.is_dir():
            raise CliError(f"--path {args.path}: no such folder (resolved to {folder}); `foundry-gateway compile` "
                           "makes a model folder")
        if not (folder / "genai_config.json").is_file():
            raise CliError(f"--path {args.path}: no genai_config.json there: not an ONNX Runtime GenAI model folder "
                           "(`foundry-gateway compile` makes one)")
    return added(path, item, as_json=args.json)


def added(path: Path, item: dict[str, Any], *, as_json: bool = False) -> int:
    """Append ``item`` to the registry at ``path`` (created if missing), said as the user asked."""
    if isinstance(item.get("min_ram_gb"), float) and item["min_ram_gb"].is_integer():
        item["min_ram_gb"] = int(item["min_ram_gb"])  # 8, as a person writes it, not 8.0
    count = append_entry(path, item)
    if as_json:
        output.json_out({"file": str(path), "added": item, "models": count})
    else:
        output.say(styled("added", "green"), f" {item['name']} to {path} ({count} model{'s' if count != 1 else ''})")
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    try:
        doc = orjson.loads(Path(args.results).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CliError(f"cannot read {args.results}: {exc}") from None
    if not isinstance(doc, dict) or "summary" not in doc:
        raise CliError(f"{args.results} is not a `foundry-gateway bench` results file")
    try:
        written, missing, path = bench.update_registry(doc, args.file or "")
    except ValueError as exc:  # results that came from the response cache
        raise CliError(str(exc)) from None
    if args.json:
        output.json_out({"file": str(path), "written": written, "not_in_file": missing})
    else:
        output.note(styled("measured", "green"), f" written to {path} for {', '.join(written) or 'no model'}"
                    + (f"; not in that file: {', '.join(missing)}" if missing else ""))
    return 0
