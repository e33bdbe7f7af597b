"""``foundry-gateway models`` (the registry's models, whether each fits this host, the upstream's state) and
``foundry-gateway select`` (the model a request would get, and why) — computed here from the registry and this
host's RAM, or asked of a running gateway (``--gateway``), which also knows what its runtime has loaded."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from app.cli import output, remote
from app.cli.output import Cell, CliError, styled, yes_no
from app.core.errors import GatewayError
from app.core.settings import Settings, load_settings
from app.gateway import Gateway
from app.openai import BY_NAME
from app.policy.routing import latency_budget


def add_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="List registry models, whether they fit this host, and the upstream's state.",
                       description="List registry models, whether they fit this host, and the upstream's state.")
    p.add_argument("--task", help="only models for this task")
    p.add_argument("--wide", action="store_true", help="also show upstream ids and notes")
    _sources(p)
    p.set_defaults(func=cmd_models)
    from app.cli import modelcache  # it reads settings the way this module does
    from app.cli.main import Parser

    modelcache.add_actions(p.add_subparsers(dest="models_command", metavar="ACTION", required=False,
                                            parser_class=Parser))

    p = sub.add_parser("select", help="Show the model a request would be routed to, and why.",
                       description="Show the model a request would be routed to, and why. Without --gateway or "
                       "--upstream the gateway on this host is asked if one runs; else the registry and this "
                       "host's RAM decide, and what the runtime has is unknown.")
    p.add_argument("--task", help="task (default: the default task)")
    p.add_argument("--model", help="a pinned model name, alias or upstream id")
    p.add_argument("--endpoint", choices=list(BY_NAME), default="chat",
                   help="the endpoint the request goes to (default: chat)")
    p.add_argument("--tools", action="store_true", help="the request carries tools")
    p.add_argument("--latency-budget-ms", type=latency_budget,
                   help="as X-Latency-Budget-Ms: skip models whose measured p95 is over it")
    _sources(p)
    p.set_defaults(func=cmd_select)


def _sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", help="registry file (default models.json)")
    p.add_argument("--upstream", help="ask this upstream URL what it has")
    remote.add_options(p, gateway_help="ask a running gateway at this URL instead")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "registry", None):
        overrides["registry_path"] = Path(args.registry)
    if getattr(args, "upstream", None):
        overrides["upstream_url"] = args.upstream
        overrides["upstream_mode"] = "external"
    return load_settings(**overrides)


def offline_gateway(args: argparse.Namespace) -> Gateway:
    """A Gateway for read-only commands; asks the upstream what it has when one is named."""
    gw = Gateway(settings_from(args))

    async def probe() -> None:
        if gw.settings.upstream_mode == "external":
            if gw.settings.upstream_url is None:
                await gw.runtime.discover()
            await gw.inventory.refresh()
        await gw.upstream.aclose()

    asyncio.run(probe())
    return gw


# --- models ------------------------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    host: dict[str, Any] | None = None
    if args.gateway:
        query = f"?task={args.task}" if args.task else ""
        rows = remote.get(args.gateway, f"/v1/models{query}", remote.api_key(args))["data"]
        described = f"as {remote.normalize(args.gateway)} says"
    else:
        from app.server.views import model_rows

        gw = offline_gateway(args)
        if args.task and args.task not in gw.registry.tasks:
            raise CliError(f"unknown task '{args.task}'; known tasks: {', '.join(gw.registry.tasks)}")
        rows = model_rows(gw, args.task)
        memory = gw.memory
        host = {"total_gb": memory.total_gb, "budget_gb": memory.budget_gb, "source": memory.source}
        described = f"this host: {memory.describe()}"
    if args.json:
        output.json_out({"host": host, "models": rows})
        return 0
    columns = ["model", "tasks", "can", "min RAM", "measured", "fits", "available", "loaded"]
    pinned = any(row.get("pinned") for row in rows)
    fleet = any(row.get("nodes") for row in rows)  # asked a front: each model's state on each node
    benched = any(row.get("measured") for row in rows)
    columns += ["pinned"] * pinned + ["nodes"] * fleet + ["p50/p95 ms", "tok/s", "rating"] * benched
    columns += ["upstream id", "notes"] * args.wide
    table = []
    for row in rows:
        cells: list[Cell] = [
            row["id"], ", ".join(row["tasks"]), ", ".join(row.get("capabilities", [])), f"{row['min_ram_gb']:g} GiB",
            "–" if row.get("measured_ram_gb") is None else f"{row['measured_ram_gb'] * 1024:.0f} MiB",
            yes_no(row["fits"]), yes_no(row["available"]), yes_no(row["loaded"] if row["available"] else None),
        ]
        if pinned:
            cells.append("pinned" if row.get("pinned") else "")
        if fleet:
            cells.append("; ".join(f"{name}{' (loaded)' if state['loaded'] else ''}"
                                   f"{'' if state['healthy'] else ' (down)'}"
                                   for name, state in (row.get("nodes") or {}).items()))
        if benched:
            cells += _measured_cells(row.get("measured") or {})
        if args.wide:
            cells += [row["upstream_id"], row["notes"]]
        table.append(cells)
    output.table(columns, table, title=f"Models — {described}", right=("p50/p95 ms", "tok/s", "rating"),
                 spare=("notes", "upstream id", "measured", "can", "tasks", "nodes", "rating", "tok/s", "p50/p95 ms"))
    if not output.stdout_is_terminal():
        output.note(f"models: {described}")
    if rows and all(row["available"] is None for row in rows):
        output.note(styled("available/loaded: unknown (no upstream reachable; pass --upstream URL or --gateway "
                           "URL)", "dim"))
    return 0


def _measured_cells(measured: dict[str, Any]) -> list[Cell]:
    latency: dict[str, Any] = measured["latency_ms"] if isinstance(measured.get("latency_ms"), dict) else {}
    rating: dict[str, Any] = measured["rating"] if isinstance(measured.get("rating"), dict) else {}
    return [
        f"{latency.get('p50', '–')}/{latency.get('p95', '–')}" if latency else "–",
        f"{measured['tokens_per_s']:.0f}" if isinstance(measured.get("tokens_per_s"), int | float) else "–",
        f"{rating['mean']:.1f} (n={rating.get('n', 0)})" if isinstance(rating.get("mean"), int | float) else "–",
    ]


# --- select ------------------------------------------------------------------------------------------------


def cmd_select(args: argparse.Namespace) -> int:
    query = {"task": args.task, "model": args.model, "endpoint": args.endpoint, "tools": "true" if args.tools else None,
             "latency_budget_ms": args.latency_budget_ms}
    path = "/v1/route?" + "&".join(f"{k}={v}" for k, v in query.items() if v is not None)
    source = ""
    try:
        if args.gateway:
            decision = remote.get(args.gateway, path, remote.api_key(args))
        else:
            decision = None
            if not args.upstream and not args.registry:  # the gateway on this host knows what its runtime has
                local = remote.local_gateway(settings_from(args))
                try:
                    decision = remote.get(local, path, remote.api_key(args), timeout=2)
                    source = f"asked the gateway at {local}"
                except remote.Unreachable:
                    decision = None
    except remote.Refused as refused:  # the gateway decided: nothing can take the request, and it says why
        return _refused(args, refused)
    if decision is None:
        try:
            decision = _decide_here(args)
        except GatewayError as err:  # decided here the same way: the same refusal, candidates and fix
            return _refused(args, remote.Refused(err.message, err.status, err.body()["error"]))
        source = "" if args.upstream else \
            "what the runtime has is unknown: no gateway asked (pass --gateway URL, or --upstream URL)"
    if args.json:
        output.json_out(decision)
        return 0
    host = decision["host"]
    output.say(styled(decision["model"], "bold"), " for task ", styled(decision["task"], "bold"),
               f" ({decision['reason']}: {decision['explanation']}); upstream id {decision['upstream_id']}")
    output.note(styled(f"host RAM {host['ram_gb']} GiB ({host['source']}), budget {host['budget_gb']} GiB"
                       + (f"; {source}" if source else ""), "dim"))
    colours = {"selected": "green", "fallback": "cyan", "skipped": "yellow"}
    output.table(["candidate", "min RAM", "decision", "why"],
                 [[c["model"], f"{c['min_ram_gb']:g} GiB", styled(c["decision"], colours.get(c["decision"], "")),
                   c["reason"]] for c in decision["candidates"]])
    if decision.get("nodes"):  # a front: where the model would run
        output.table(["node", "decision", "why"],
                     [[n["node"], styled(n["decision"], colours.get(n["decision"], "")), n["reason"]]
                      for n in decision["nodes"]], title=f"{decision['model']} on the nodes")
    return 0


def _refused(args: argparse.Namespace, refused: remote.Refused) -> int:
    """The gateway's refusal as it gave it: the reason, each candidate and why it was skipped, the fix."""
    if args.json:
        output.json_out({"status": refused.status, "error": refused.error})
        return 1
    output.error(str(refused))
    candidates = refused.error.get("candidates") or []
    if candidates:
        output.table(["candidate", "min RAM", "decision", "why"],
                     [[c["model"], f"{c['min_ram_gb']:g} GiB", styled(c["decision"], "yellow"), c["reason"]]
                      for c in candidates])
    if refused.error.get("fix"):
        output.note(styled("to fix: ", "bold"), str(refused.error["fix"]))
    return 1


def _decide_here(args: argparse.Namespace) -> dict[str, Any]:
    gw = offline_gateway(args)
    need = {BY_NAME[args.endpoint].capability, *(["tools"] if args.tools else [])}
    route = gw.router.route(args.model, args.task, frozenset(need), args.latency_budget_ms)
    decision = route.as_dict()
    decision["upstream_id"] = gw.inventory.upstream_id(route.model)
    decision["host"] = {"ram_gb": round(gw.memory.total_gb, 2), "budget_gb": round(gw.memory.budget_gb, 2),
                        "source": gw.memory.source}
    return decision
