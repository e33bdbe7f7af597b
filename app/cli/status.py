"""``foundry-gateway status``: what a running gateway is doing — the console's view (``GET /v1/console``) in the
terminal: RAM budget and loaded models, the last minute of traffic, the last routing decisions, the nodes."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli import output, remote
from app.cli.models import settings_from
from app.cli.output import styled


def add_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="What a running gateway is doing: RAM, loaded models, traffic, decisions, "
                       "nodes.", description="What a running gateway is doing: RAM, loaded models, traffic, "
                       "decisions, nodes (the console's view, GET /v1/console).")
    remote.add_options(p, gateway_help="the gateway to ask (default: this host's, from GATEWAY_HOST/GATEWAY_PORT)")
    p.add_argument("--last", type=int, default=10, help="how many routing decisions to show (default 10)")
    p.add_argument("--json", action="store_true", help="the console's JSON (GET /v1/console)")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    url = args.gateway or remote.local_gateway(settings_from(args))
    state = remote.get(url, "/v1/console", remote.api_key(args))
    if args.json:
        output.json_out(state)
        return 0
    budget = state["host"]
    used = sum(m["ram_gb"] for m in budget["loaded"])
    loaded = ", ".join(f"{m['model']} ({m['ram_gb']} GiB)" for m in budget["loaded"]) or "no loaded models"
    output.say(styled(f"foundry-gateway {state['version']}", "bold"), " — ",
               styled("ready", "green") if state["ready"] else styled("not ready", "red"),
               f"; RAM: {used:.2f} of {budget['budget_gb']} GiB budget in {loaded}")
    last_minute = state["traffic"][-6:]
    rate = sum(p["requests_per_s"] for p in last_minute) / max(len(last_minute), 1)
    ttft = next((p for p in reversed(state["traffic"]) if p["ttft_p50_ms"] is not None), None)
    ttft_text = f"{ttft['ttft_p50_ms']}/{ttft['ttft_p95_ms']} ms" if ttft else "–"
    requests = sum(p.get("requests", 0) for p in last_minute)
    failed = sum(p.get("errors", 0) for p in last_minute)
    failures = styled(f"{failed} failed (5xx)", "red") if failed else "none failed"
    output.say(f"last minute: {requests} requests ({rate:.2f}/s), ", failures, f", TTFT p50/p95 {ttft_text}"
               + (f"; you see {state['you']['sees']}" if state.get("you") else ""))
    rejected = (state.get("registry") or {}).get("rejected")
    if rejected:
        output.say(styled("registry reload rejected", "bold red"), f" (the last good one stays in force): {rejected}")
    output.table(["endpoint", "model", "task", "why", "node", "status", "ms"],
                 [[d["endpoint"], d["model"] or "–", d["task"] or "", f"{d['reason']}; {d['why'] or ''}",
                   d["node"] or "", styled(str(d["status"]), "red") if d["status"] >= 400 else str(d["status"]),
                   str(d["duration_ms"])] for d in state["decisions"][:args.last]],
                 title="last routing decisions", right=("status", "ms"))
    if state.get("nodes"):
        output.table(["node", "health", "loaded", "in flight", "queued"],
                     [[n["node"], styled("up", "green") if n["healthy"] else styled(f"down: {n['why_down']}", "red"),
                       ", ".join(n["loaded"]), str(n["in_flight"]), str(n["queued"])] for n in state["nodes"]],
                     title="nodes")
    return 0
