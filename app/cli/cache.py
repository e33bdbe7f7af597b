"""``foundry-gateway cache ls|stats|flush``: the gateway's response cache (answers kept for identical requests) on a
running gateway, with the admin key — what it keeps (never the text), how much, and dropping it, all of it or one
team key's (``--key NAME``). Foundry Local's *model* cache is ``foundry-gateway models cache``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from app.cli import output, remote
from app.cli.models import settings_from
from app.cli.output import styled


def add_parser(sub: Any) -> None:
    cache = sub.add_parser("cache", help="The response cache on a running gateway: ls, stats, flush (admin key).",
                           description="The gateway's response cache — answers kept for identical requests "
                           "(README \"The response cache\"): what it keeps, how much, and dropping it. Needs the "
                           "admin key (--api-key or GATEWAY_API_KEY). Foundry Local's model cache is "
                           "`foundry-gateway models cache`.")
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    p = actions.add_parser("ls", help="The kept answers, newest first: model, key, size, age (never their text).")
    p.add_argument("--key", help="only this team key's answers")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default %(default)s)")
    _options(p)
    p.set_defaults(func=cmd_ls)
    p = actions.add_parser("stats", help="How much the cache keeps, where (this process or Redis), per key.")
    _options(p)
    p.set_defaults(func=cmd_stats)
    p = actions.add_parser("flush", help="Drop the kept answers (all, or one team key's with --key).")
    p.add_argument("--key", help="only this team key's answers")
    _options(p)
    p.set_defaults(func=cmd_flush)


def _options(p: argparse.ArgumentParser) -> None:
    remote.add_options(p, gateway_help="the running gateway (default: this host's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _url(args: argparse.Namespace) -> str:
    return args.gateway or remote.local_gateway(settings_from(args))


def _ask(ask: Callable[[str, str, str | None], Any], args: argparse.Namespace, path: str) -> Any:
    """One admin call; when no gateway answers, the hint that Foundry Local's model cache needs none."""
    try:
        return ask(_url(args), path, remote.api_key(args))
    except remote.Unreachable as exc:
        raise remote.Unreachable(f"{exc} — this is the response cache of a running gateway; the models Foundry "
                                 "Local keeps on disk are `foundry-gateway models cache ls`") from None


def _query(args: argparse.Namespace, **more: Any) -> str:
    pairs = {"key": getattr(args, "key", None), **more}
    found = "&".join(f"{k}={quote(str(v))}" for k, v in pairs.items() if v is not None)
    return f"?{found}" if found else ""


def cmd_ls(args: argparse.Namespace) -> int:
    found = _ask(remote.get, args, "/admin/cache" + _query(args, limit=args.limit))
    if args.json:
        output.json_out(found)
        return 0
    output.table(["key", "model", "team key", "stream", "bytes", "age s", "tokens"],
                 [[e["key"], e["model"], e["scope"] or "(shared)", "yes" if e["stream"] else "no", str(e["bytes"]),
                   f"{e['age_s']:.0f}", "–" if e["tokens"] is None else str(e["tokens"])] for e in found["entries"]],
                 title="response cache" + (f" — key {args.key}" if args.key else ""),
                 right=("bytes", "age s", "tokens"))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    stats = _ask(remote.get, args, "/admin/cache")["stats"]
    if args.json:
        output.json_out(stats)
        return 0
    entries = f"{stats['entries']} answers, " if "entries" in stats else ""
    output.say(f"response cache in {stats['where']}: {entries}{stats['bytes']:,} of {stats['max_bytes']:,} bytes, "
               f"kept {stats['ttl_s']:g} s")
    for key, count in sorted((stats.get("by_key") or {}).items()):
        output.say(f"  {key or '(shared)'}\t{count}")
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    done = _ask(remote.post, args, "/admin/cache/flush" + _query(args))
    if args.json:
        output.json_out(done)
        return 0
    output.say(styled("flushed", "green"), f" {done['flushed']} answers" + (f" of key {args.key}" if args.key else ""))
    return 0
