"""``foundry-gateway usage``: who used what on a running gateway (``GET /v1/usage``), summed over a span of time
and grouped — tokens, runtime seconds, cost — as a table on a terminal, plain lines in a pipe, ``--json`` or
``--csv``."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from typing import Any
from urllib.parse import urlencode

from app.access.keys import iso
from app.access.usage import GROUPS
from app.cli import output, remote
from app.cli.durations import span
from app.cli.models import settings_from
from app.cli.output import CliError

COLUMNS = (("num_model_requests", "requests"), ("input_tokens", "input tokens"), ("output_tokens", "output tokens"),
           ("runtime_seconds", "runtime s"), ("cost", "cost"), ("error_requests", "errors"),
           ("cached_requests", "cached"))
_SUMMED = ("num_model_requests", "input_tokens", "output_tokens", "runtime_seconds", "cost", "error_requests",
           "cached_requests", "estimated_requests")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("usage", help="Who used what: requests, tokens, runtime seconds and cost per key and model.",
                       description="Usage on a running gateway (GET /v1/usage), summed over --since and grouped "
                       "with --by. A team key sees its own usage; the admin key sees every key's.")
    remote.add_options(p, gateway_help="the gateway to ask (default: this host's, from GATEWAY_HOST/GATEWAY_PORT)")
    p.add_argument("--by", default="key,model", metavar="GROUPS",
                   help=f"what to group by, comma-separated, of: {', '.join(GROUPS)} (default key,model; '' for one "
                        "total)")
    p.add_argument("--since", type=span, default=span("7d"), metavar="SPAN",
                   help="how far back: 90m, 12h, 7d, 2w (default 7d)")
    p.add_argument("--key", help="one key's usage only (the admin key may name any)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="the rows as JSON")
    form.add_argument("--csv", action="store_true", help="the rows as CSV")
    p.set_defaults(func=cmd_usage)


def cmd_usage(args: argparse.Namespace) -> int:
    groups = [g.strip() for g in args.by.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise CliError(f"--by can group by {', '.join(GROUPS)}; not {', '.join(unknown)}")
    url = args.gateway or remote.local_gateway(settings_from(args))
    now = time.time()
    since = now - args.since
    width = "1h" if args.since <= 31 * 86400 else "1d"
    params: dict[str, Any] = {"bucket_width": width, "start_time": int(since), "end_time": int(now) + 1,
                              "limit": 168 if width == "1h" else 31}
    if groups:
        params["group_by"] = ",".join(groups)
    if args.key:
        params["key"] = args.key
    rows = _summed(url, params, remote.api_key(args), groups)
    if args.json:
        output.json_out({"since": iso(since), "until": iso(now), "group_by": groups, "rows": rows})
        return 0
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([*groups, *_SUMMED])
        writer.writerows([[_plain(row[g]) for g in groups] + [_plain(row[m]) for m in _SUMMED] for row in rows])
        return 0
    output.table([*groups, *(title for _, title in COLUMNS)],
                 [[_plain(row[g]) or "–" for g in groups] + [_shown(row[m], m) for m, _ in COLUMNS] for row in rows],
                 title=f"usage since {iso(since)}" + (f" by {', '.join(groups)}" if groups else ""),
                 right=tuple(title for _, title in COLUMNS))
    return 0


def _summed(url: str, params: dict[str, Any], key: str | None, groups: list[str]) -> list[dict[str, Any]]:
    """Every page's results summed per group, the largest users first."""
    totals: dict[tuple[Any, ...], dict[str, Any]] = {}
    while True:
        page = remote.get(url, f"/v1/usage?{urlencode(params)}", key)
        for bucket in page["data"]:
            for result in bucket["results"]:
                group = tuple(result[g] for g in groups)
                row = totals.setdefault(group, {**dict(zip(groups, group, strict=True)),
                                                **{m: 0 for m in _SUMMED}, "cost": None})
                for measure in _SUMMED:
                    value = result.get(measure)
                    if value is not None:
                        row[measure] = (row[measure] or 0) + value
        if not page.get("has_more"):
            break
        params = {**params, "page": page["next_page"]}
    for row in totals.values():
        row["runtime_seconds"] = round(row["runtime_seconds"], 3)
        if row["cost"] is not None:
            row["cost"] = round(row["cost"], 6)
    return sorted(totals.values(), key=lambda r: (-r["num_model_requests"], *(str(r[g]) for g in groups)))


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "batch" if value else "interactive"
    return str(value)


def _shown(value: Any, measure: str) -> str:
    if value is None:
        return "–"
    if measure == "runtime_seconds":
        return f"{value:.1f}"
    if measure == "cost":
        return f"{value:.4f}"
    return f"{value:,}"
