"""``foundry-gateway settings``: the settings in force (secrets masked), or the settings table of docs/settings.md."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli import output
from app.core.settings import Settings, load_settings

SECRETS = ("api_keys", "upstream_api_key", "metrics_api_key", "admin_api_key")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("settings", help="Show the settings in force, or the settings table.",
                       description="Show the settings in force (GATEWAY_* environment, config/gateway.env; secrets "
                       "masked), or the settings table of docs/settings.md.")
    p.add_argument("--markdown", action="store_true", help="print the settings table (docs/settings.md)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_settings)


def settings_table() -> str:
    """The README's settings table, generated from the Settings class."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or "(empty)"
        shown = "(unset)" if default is None else str(default)
        lines.append(f"| `GATEWAY_{name.upper()}` | `{shown}` | {field.description or ''} |")
    return "\n".join(lines)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(settings_table() + "\n")
        return 0
    current = load_settings().model_dump(mode="json")
    for secret in SECRETS:
        if current.get(secret):
            current[secret] = "***"
    if args.json:
        output.json_out(current)
        return 0
    output.table(["variable", "value"], [[f"GATEWAY_{name.upper()}", str(value)] for name, value in current.items()],
                 title="Settings in force (GATEWAY_* environment, config/gateway.env)")
    return 0
