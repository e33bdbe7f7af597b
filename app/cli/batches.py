"""``foundry-gateway batches create|ls|show|output|cancel``: a running gateway's batches (``/v1/batches``) in the
terminal — a JSONL file in (uploaded, run, optionally waited for with a progress bar), the output file out; the
caller's own, or every team's with the admin key."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.batches.lines import BATCHABLE
from app.batches.records import DONE, BatchStatus
from app.cli import output, remote
from app.cli.models import settings_from
from app.cli.output import CliError, styled

_STYLES = {BatchStatus.COMPLETED: "green", BatchStatus.FAILED: "red", BatchStatus.EXPIRED: "red",
           BatchStatus.CANCELLED: "yellow", BatchStatus.CANCELLING: "yellow"}
# what `create` exits 0 for: a batch under way, or one that completed
_FINE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.COMPLETED)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("batches", help="Create, list, show, cancel batches and get their output on a running gateway.",
                       description="A running gateway's batches (the OpenAI Batch API, /v1/batches): the caller's "
                       "own, or every team's with the admin key.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="upload a JSONL file of requests and run it as a batch",
                                description="Upload FILE (one request a line: custom_id, method, url, body) and "
                                "run it as a batch; --wait shows its progress and writes the output when it ends.")
    create.add_argument("file", type=Path, help="the JSONL file of requests")
    create.add_argument("--endpoint", choices=BATCHABLE, default=BATCHABLE[0],
                        help="the endpoint every line calls (default %(default)s)")
    create.add_argument("--window", default="24h", help="completion window, in hours (default %(default)s)")
    create.add_argument("--wait", action="store_true", help="wait for the batch to end, with a progress bar")
    create.add_argument("--out", type=Path, help="with --wait: write the output file here (default: stdout)")
    create.set_defaults(func=cmd_create)
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
    out = actions.add_parser("output", help="a batch's output file (or its error file): one answer a line",
                             description="Write a finished batch's output file — or with --errors its error file — "
                             "to stdout or --out FILE, a piece at a time.")
    out.add_argument("batch_id")
    out.add_argument("--errors", action="store_true", help="the error file instead")
    out.add_argument("--out", type=Path, help="write here instead of stdout")
    out.set_defaults(func=cmd_output)
    for action in (create, ls, show, cancel, out):
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


def cmd_create(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    url, key = remote.normalize(_url(args)), remote.api_key(args)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client, args.file.open("rb") as content:
            uploaded = _ok(client.post("/v1/files", files={"file": (args.file.name, content)},
                                       data={"purpose": "batch"}))  # streamed from disk by httpx
            batch = _ok(client.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": args.endpoint,
                                                         "completion_window": args.window}))
            if args.wait:
                batch = _wait(client, batch)
                if batch["output_file_id"]:
                    _download(client, batch["output_file_id"], args.out)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from None
    if args.json:
        output.json_out(batch)
    elif not args.wait:
        output.say(styled(batch["id"], "bold"), f" created from {args.file} ({uploaded['bytes']:,} bytes): ",
                   _status(batch), f"; `foundry-gateway batches show {batch['id']}`")
    else:
        output.note(batch["id"], ": ", _status(batch), f" ({_progress(batch)} done)")
    return 0 if batch["status"] in _FINE else 1


def cmd_output(args: argparse.Namespace) -> int:
    batch = remote.get(_url(args), f"/v1/batches/{args.batch_id}", remote.api_key(args))
    file_id = batch["error_file_id"] if args.errors else batch["output_file_id"]
    if file_id is None:
        which = "error" if args.errors else "output"
        raise CliError(f"{batch['id']} has no {which} file ({batch['status']}, {_progress(batch)} done)")
    key = remote.api_key(args)
    try:
        with httpx.Client(base_url=remote.normalize(_url(args)), timeout=300,
                          headers={"Authorization": f"Bearer {key}"} if key else {}) as client:
            _download(client, file_id, args.out)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot download {file_id}: {exc.__class__.__name__}: {exc}") from None
    return 0


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise CliError(f"{response.request.method} {response.request.url.path}: {response.status_code}: {message}")
    found: dict[str, Any] = response.json()
    return found


def _wait(client: httpx.Client, batch: dict[str, Any]) -> dict[str, Any]:
    console = Console(stderr=True, markup=False, highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(batch["id"], total=None)
        while batch["status"] not in DONE:
            counts = batch["request_counts"]
            progress.update(task, total=counts["total"] or None, completed=counts["completed"] + counts["failed"],
                            description=f"{batch['id']} {batch['status']}")
            time.sleep(0.5)
            batch = _ok(client.get(f"/v1/batches/{batch['id']}"))
    return batch


def _download(client: httpx.Client, file_id: str, path: Path | None) -> None:
    """A file's content to ``path`` (or stdout), a piece at a time."""
    with client.stream("GET", f"/v1/files/{file_id}/content") as response:
        if response.status_code >= 400:
            response.read()
            _ok(response)
        target = path.open("wb") if path else sys.stdout.buffer
        try:
            for chunk in response.iter_bytes():
                target.write(chunk)
        finally:
            if path:
                target.close()
            else:
                target.flush()
    if path:
        output.note(styled("wrote", "green"), f" {path}")


def _show(batch: dict[str, Any]) -> None:
    rows = [["status", _status(batch)], ["endpoint", batch["endpoint"]], ["done", _progress(batch)],
            ["input file", batch["input_file_id"]], ["output file", batch["output_file_id"] or "–"],
            ["error file", batch["error_file_id"] or "–"], ["window", batch["completion_window"]]]
    stamps = (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.COMPLETED, BatchStatus.FAILED,
              BatchStatus.CANCELLING, BatchStatus.CANCELLED, BatchStatus.EXPIRED)
    for name in ("created", *stamps, "expires"):  # each status's time, as its ``<status>_at`` field
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
