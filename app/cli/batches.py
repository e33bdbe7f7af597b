"""``foundry-gateway batches ls|show|cancel``: a running gateway's batches (``/v1/batches``) in the terminal —
the caller's own, or every team's with the admin key."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from app.cli import output, remote
from app.cli.models import settings_from
from app.cli.output import styled

_STYLES = {"completed": "green", "failed": "red", "expired": "red", "cancelled": "yellow", "cancelling": "yellow"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("batches", help="List, show and cancel batches on a running gateway.",
                       description="A running gateway's batches (the OpenAI Batch API, /v1/batches): the caller's "
                       "own, or every team's with the admin key.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", help="batches, newest first, with their progress",
                            description="Batches, newest first, with their progress.")
    ls.add_argument("--limit", type=int, default=20, help="how many (default %(default)s, at most 100)")
    ls.set_defaults(func=cmd_ls)
    show = actions.add_parser("show", help="one batch: status, progress, times, files, input errors",
                              description="One batch: status, progress, times, files and input errors.")
    show.add_argument("batch_id")
    show.set_defaults(func=cmd_show)
    cancel = actions.add_parser("cancel", help="cancel a batch (what finished is kept)",
                                description="Cancel a batch: lines not yet run are not run; what finished is "
                                "written to its output file.")
    cancel.add_argument("batch_id")
    cancel.set_defaults(func=cmd_cancel)
    for action in (ls, show, cancel):
        remote.add_options(action, gateway_help="the gateway to ask (default: this host's, from "
                           "GATEWAY_HOST/GATEWAY_PORT)")
        action.add_argument("--json", action="store_true", help="the gateway's JSON")


def _url(args: argparse.Namespace) -> str:
    return str(args.gateway or remote.local_gateway(settings_from(args)))


def _when(stamp: int | None) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S") if stamp else "–"


def _progress(batch: dict[str, Any]) -> str:
    counts = batch["request_counts"]
    done = counts["completed"] + counts["failed"]
    failed = f", {counts['failed']} failed" if counts["failed"] else ""
    return f"{done}/{counts['total']}{failed}" if counts["total"] else "–"


def _status(batch: dict[str, Any]) -> output.Cell:
    return styled(batch["status"], _STYLES.get(batch["status"], ""))


def cmd_ls(args: argparse.Namespace) -> int:
    found = remote.get(_url(args), f"/v1/batches?limit={max(1, min(args.limit, 100))}", remote.api_key(args))
    if args.json:
        output.json_out(found)
        return 0
    output.table(["id", "status", "endpoint", "done", "created"],
                 [[b["id"], _status(b), b["endpoint"], _progress(b), _when(b["created_at"])] for b in found["data"]],
                 title="batches", right=("done",))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    batch = remote.get(_url(args), f"/v1/batches/{args.batch_id}", remote.api_key(args))
    if args.json:
        output.json_out(batch)
        return 0
    _show(batch)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    batch = remote.post(_url(args), f"/v1/batches/{args.batch_id}/cancel", remote.api_key(args))
    if args.json:
        output.json_out(batch)
        return 0
    output.say(batch["id"], ": ", _status(batch), f" ({_progress(batch)} done)")
    return 0


def _show(batch: dict[str, Any]) -> None:
    rows = [["status", _status(batch)], ["endpoint", batch["endpoint"]], ["done", _progress(batch)],
            ["input file", batch["input_file_id"]], ["output file", batch["output_file_id"] or "–"],
            ["error file", batch["error_file_id"] or "–"], ["window", batch["completion_window"]]]
    for name in ("created", "in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled",
                 "expired", "expires"):
        stamp = batch.get(f"{name}_at")
        if stamp:
            rows.append([name.replace("_", " "), _when(stamp)])
    for key, value in (batch.get("metadata") or {}).items():
        rows.append([f"metadata.{key}", value])
    output.table(["field", "value"], rows, title=batch["id"])
    errors = (batch.get("errors") or {}).get("data") or []
    if errors:
        output.table(["line", "code", "message"], [[str(e.get("line") or "–"), e["code"], e["message"]]
                                                    for e in errors], title="input errors", right=("line",))
