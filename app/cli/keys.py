"""``foundry-gateway keys add|ls|rm|rotate``: team keys in ``GATEWAY_KEYS_FILE``. ``add`` generates a key, prints
it once and stores only its SHA-256; ``rotate`` issues a new secret and keeps the old one working for an overlap
window (usage stays with the key's name); ``ls`` never shows a key or a hash. ``--models`` must name models the registry
has, so a typo cannot leave a team with no model it may use."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from app.access.keys import BUDGETS, LIMITS, KeysError, digest, iso, parse_keys
from app.cli import output
from app.cli.durations import span
from app.cli.output import CliError, styled
from app.core.registry import load_registry
from app.core.settings import load_settings


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="Team API keys: allow-lists and quotas (GATEWAY_KEYS_FILE).",
                          description="Team API keys in GATEWAY_KEYS_FILE (JSON or YAML): `add` generates a key, "
                                      "prints it once and stores only its SHA-256.")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = actions.add_parser("add", help="Generate a key for a team (printed once) with its allow-lists and quotas.")
    p.add_argument("name", help="the team or app it is for (shown in metrics and logs)")
    p.add_argument("--models", nargs="+", help="registry names or aliases it may use (default: all)")
    p.add_argument("--tasks", nargs="+", help="tasks it may use (default: all)")
    p.add_argument("--requests-per-minute", type=int, default=0)
    p.add_argument("--tokens-per-minute", type=int, default=0)
    p.add_argument("--tokens-per-day", type=int, default=0)
    p.add_argument("--max-concurrency", type=int, default=0, help="requests at once")
    p.add_argument("--max-cost-per-day", type=float, default=0.0, metavar="COST",
                   help="budget: cost (the registry's prices) per UTC day")
    p.add_argument("--max-tokens-per-month", type=int, default=0, metavar="TOKENS",
                   help="budget: input and output tokens per UTC month")
    p.add_argument("--expires", type=span, metavar="SPAN", help="refused after this long: 30d, 12h, 2w (default never)")
    p.add_argument("--priority", choices=["interactive", "batch"], help="its requests' default X-Priority")
    p.add_argument("--file", help="keys file (default GATEWAY_KEYS_FILE)")
    p.add_argument("--registry", help="registry the --models are checked against (default models.json)")
    p.add_argument("--json", action="store_true", help="print the name and the key as JSON")
    p.set_defaults(func=cmd_add)
    p = actions.add_parser("ls", help="List the keys (names, allow-lists, quotas; never a key or hash).")
    p.add_argument("--file", help="keys file (default GATEWAY_KEYS_FILE)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ls)
    p = actions.add_parser("rotate", help="Issue a new secret for a key (printed once); the old one works a while.",
                           description="Issue a new secret for a key, printed once. The old secret keeps working, as "
                                       "the same key, for the overlap window, so apps can move over; usage stays with "
                                       "the key's name.")
    p.add_argument("name")
    p.add_argument("--overlap", type=span, default=span("1d"), metavar="SPAN",
                   help="how long the old secret keeps working (default 1d)")
    p.add_argument("--expires", type=span, metavar="SPAN", help="the key's new expiry from now (default: unchanged)")
    p.add_argument("--file", help="keys file (default GATEWAY_KEYS_FILE)")
    p.add_argument("--json", action="store_true", help="print the name and the new key as JSON")
    p.set_defaults(func=cmd_rotate)
    p = actions.add_parser("rm", help="Remove a key.")
    p.add_argument("name")
    p.add_argument("--file", help="keys file (default GATEWAY_KEYS_FILE)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_rm)


DEFAULT_FILE = Path("config/keys.yaml")  # where `keys add` starts one when none is set


def _path(args: argparse.Namespace, *, creating: bool = False) -> Path:
    """The keys file: --file, else GATEWAY_KEYS_FILE, else (for ``add``) config/keys.yaml, started there."""
    path = Path(args.file) if args.file else load_settings().keys_file
    if path is None:
        if not creating and not DEFAULT_FILE.exists():
            raise KeysError([f"no keys file: pass --file PATH or set GATEWAY_KEYS_FILE (`foundry-gateway keys add "
                             f"NAME` starts {DEFAULT_FILE})"])
        path = DEFAULT_FILE
        said = "started" if not path.exists() else "using"
        output.note(styled(said, "green"), f" {path}. The gateway reads it only when told: set "
                    f"GATEWAY_KEYS_FILE={path} (in the environment or config/gateway.env) and restart it.")
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"keys": []}
    text = path.read_text(encoding="utf-8")
    yaml = path.suffix.lower() in (".yaml", ".yml")
    parse_keys(text, label=path.name, yaml=yaml)  # refuse to edit a file that does not load
    if yaml:
        import yaml as pyyaml

        return dict(pyyaml.safe_load(text))
    return dict(json.loads(text))


def _write(path: Path, data: dict[str, Any]) -> None:
    text = _dumped(path, data)
    parse_keys(text, label=path.name, yaml=_is_yaml(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o600)  # names and limits are not secret, but nobody else needs them either
    temporary.replace(path)  # atomic: a running gateway reloads whole files only


def _check_models(names: list[str], registry_file: str | None) -> None:
    registry = load_registry(Path(registry_file) if registry_file else load_settings().registry_path)
    unknown = [name for name in names if registry.lookup(name) is None]
    if unknown:
        raise CliError(f"not in the registry: {', '.join(unknown)} (it has: {', '.join(e.name for e in registry)})")


def cmd_add(args: argparse.Namespace) -> int:
    path = _path(args, creating=True)
    data = _read(path)
    if any(k.get("name") == args.name for k in data["keys"]):
        raise CliError(f"a key named '{args.name}' is already in {path}")
    if args.models:
        _check_models(args.models, args.registry)
    key = "fgw-" + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"name": args.name, "key_sha256": digest(key)}
    for field in ("models", "tasks"):
        if getattr(args, field):
            entry[field] = getattr(args, field)
    for field in LIMITS:
        if getattr(args, field):
            entry[field.value] = getattr(args, field)
    for field in BUDGETS:
        if getattr(args, field):
            entry[field.value] = getattr(args, field)
    if args.priority:
        entry["priority"] = args.priority
    if args.expires:
        entry["expires_at"] = iso(time.time() + args.expires)
    data["keys"].append(entry)
    _write(path, data)
    if args.json:
        output.json_out({"name": args.name, "key": key, "file": str(path)})
        return 0
    output.note(styled("added", "green"), f" '{args.name}' to {path}. The key (shown once, store it now):")
    sys.stdout.write(key + "\n")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    path = _path(args)
    text = path.read_text(encoding="utf-8") if path.exists() else '{"keys": []}'
    ring = parse_keys(text, label=path.name, yaml=path.suffix.lower() in (".yaml", ".yml"))
    rows = [key.describe() for key in ring]
    if args.json:
        output.json_out({"file": str(path), "keys": rows})
        return 0
    output.table(["name", "models", "tasks", "req/min", "tokens/min", "tokens/day", "at once", "cost/day",
                  "tokens/month", "priority", "expires"],
                 [[row["name"], ", ".join(row["models"]) if row["models"] else "all",
                   ", ".join(row["tasks"]) if row["tasks"] else "all",
                   *(str(row[f]) if row[f] else "–" for f in (*LIMITS, *BUDGETS)), row["priority"] or "–",
                   row["expires_at"] or "never"] for row in rows],
                 title=f"Keys — {path}", spare=("tasks", "cost/day", "tokens/month"))
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    path = _path(args)
    data = _read(path)
    entry = next((k for k in data["keys"] if k.get("name") == args.name), None)
    if entry is None:
        raise CliError(f"no key named '{args.name}' in {path}")
    now = time.time()
    current = next(k for k in parse_keys(_dumped(path, data), label=path.name, yaml=_is_yaml(path))
                   if k.name == args.name)
    kept = [(sha, until) for sha, until in current.previous if until > now]  # replaced secrets that still work
    old = current.sha256
    entry.pop("key", None)
    key = "fgw-" + secrets.token_urlsafe(32)
    entry["key_sha256"] = digest(key)
    entry["previous"] = [{"key_sha256": sha, "expires_at": iso(until)} for sha, until in kept] + \
        [{"key_sha256": old, "expires_at": iso(now + args.overlap)}]
    if args.expires:
        entry["expires_at"] = iso(now + args.expires)
    _write(path, data)
    if args.json:
        output.json_out({"name": args.name, "key": key, "file": str(path),
                         "old_key_works_until": iso(now + args.overlap)})
        return 0
    output.note(styled("rotated", "green"), f" '{args.name}' in {path}: the old secret works until "
                f"{iso(now + args.overlap)}. The new key (shown once, store it now):")
    sys.stdout.write(key + "\n")
    return 0


def _is_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml")


def _dumped(path: Path, data: dict[str, Any]) -> str:
    if _is_yaml(path):
        import yaml as pyyaml

        return str(pyyaml.safe_dump(data, sort_keys=False))
    return json.dumps(data, indent=2) + "\n"


def cmd_rm(args: argparse.Namespace) -> int:
    path = _path(args)
    data = _read(path)
    kept = [k for k in data["keys"] if k.get("name") != args.name]
    if len(kept) == len(data["keys"]):
        raise CliError(f"no key named '{args.name}' in {path}")
    data["keys"] = kept
    _write(path, data)
    if args.json:
        output.json_out({"removed": args.name, "file": str(path)})
    else:
        output.note(styled("removed", "green"), f" '{args.name}' from {path} (running gateways stop accepting it "
                    "on reload)")
    return 0
