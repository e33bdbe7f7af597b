"""The front's view of its nodes: who they are (``GATEWAY_NODES``, names re-resolved: a Kubernetes headless
Service name is one node per address), how they are (their ``/v1/node`` status, polled often), and the
requests this front has on each right now.

A node that refuses a connection is ejected at once — by the request that found out or by the poll — and comes
back when a poll succeeds. Each node is reached through its own pool of keep-alive connections (an
``Upstream`` of kind ``openai``: a node is an OpenAI-compatible gateway), so the front forwards and streams
bytes exactly as a node does to its runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.placement import ModelState, NodeView
from app.settings import Settings
from app.upstream.client import Upstream

log = logging.getLogger("foundry_gateway.fleet")
Resolver = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """Every address a name resolves to (a headless Service: one per pod), in a stable order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


def expand(urls: Iterable[str], resolver: Resolver = resolve_host) -> dict[str, str]:
    """Node name (``address:port``) → base URL, for each configured URL and each address of its host."""
    nodes: dict[str, str] = {}
    for url in urls:
        parts = urlsplit(url.rstrip("/"))
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
        for address in resolver(host, port) or [host]:
            shown = f"[{address}]" if ":" in address else address
            nodes[f"{shown}:{port}"] = f"{parts.scheme}://{shown}:{port}"
    return nodes


@dataclass
class Node:
    name: str
    url: str
    upstream: Upstream
    healthy: bool = False
    why_down: str = "not polled yet"
    models: dict[str, ModelState] = field(default_factory=dict)
    front_in_flight: dict[str, int] = field(default_factory=dict)
    polled_at: float = 0.0

    def view(self) -> NodeView:
        return NodeView(self.name, self.healthy, dict(self.models), dict(self.front_in_flight), self.why_down)


class Fleet:
    def __init__(self, settings: Settings, resolver: Resolver = resolve_host,
                 on_change: Callable[[str, bool], None] = lambda node, up: None) -> None:
        self.settings = settings
        self.resolver = resolver
        self.on_change = on_change
        self.nodes: dict[str, Node] = {}
        self.resolved_at = 0.0
        self.refresh_names()

    # --- membership ---------------------------------------------------------------------------------------

    def refresh_names(self) -> None:
        """Re-resolve ``GATEWAY_NODES``: new addresses join (unhealthy until polled), gone ones leave."""
        found = expand(self.settings.nodes, self.resolver)
        for name, url in found.items():
            if name not in self.nodes:
                self.nodes[name] = Node(name, url, Upstream(self.settings, base_url=url, kind="openai"))
                log.info("node %s joined (%s)", name, url)
        for name in [n for n in self.nodes if n not in found]:
            log.warning("node %s left (no longer in the names' addresses)", name)
            node = self.nodes.pop(name)
            self._spawn_close(node)
        self.resolved_at = time.monotonic()

    def _spawn_close(self, node: Node) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop (tests, shutdown): nothing to close with
            asyncio.get_running_loop().create_task(node.upstream.aclose())

    def views(self) -> list[NodeView]:
        return [node.view() for node in self.nodes.values()]

    # --- health ---------------------------------------------------------------------------------------------

    def eject(self, name: str, why: str) -> None:
        node = self.nodes.get(name)
        if node is not None and node.healthy:
            node.healthy, node.why_down = False, why
            log.warning("node %s ejected: %s", name, why)
            self.on_change(name, False)

    async def poll(self, node: Node) -> None:
        try:
            answer = await node.upstream.client.get(f"{node.url}/v1/node", headers=node.upstream.headers,
                                                    timeout=node.upstream.quick_timeout)
            answer.raise_for_status()
            status = answer.json()
            node.models = {row["id"]: _state(row) for row in status["models"]}
            ready = bool(status.get("ready"))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.eject(node.name, f"status poll failed: {exc.__class__.__name__}")
            return
        node.polled_at = time.monotonic()
        if ready and not node.healthy:
            log.info("node %s admitted", node.name)
            node.healthy, node.why_down = True, ""
            self.on_change(node.name, True)
        elif not ready:
            self.eject(node.name, "not ready")

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(node) for node in list(self.nodes.values())))

    async def run(self) -> None:
        """Poll every node every ``GATEWAY_NODE_POLL_INTERVAL``; re-resolve names every
        ``GATEWAY_NODE_RESOLVE_INTERVAL``."""
        while True:
            if time.monotonic() - self.resolved_at >= self.settings.node_resolve_interval:
                await asyncio.to_thread(self.refresh_names)
            await self.poll_all()
            await asyncio.sleep(self.settings.node_poll_interval)

    async def aclose(self) -> None:
        for node in self.nodes.values():
            await node.upstream.aclose()

    # --- this front's own load ------------------------------------------------------------------------------

    def started(self, name: str, model: str) -> None:
        node = self.nodes.get(name)
        if node is not None:
            node.front_in_flight[model] = node.front_in_flight.get(model, 0) + 1

    def ended(self, name: str, model: str) -> None:
        node = self.nodes.get(name)
        if node is not None and node.front_in_flight.get(model):
            node.front_in_flight[model] -= 1


def _state(row: dict[str, Any]) -> ModelState:
    return ModelState(available=row.get("available"), fits=bool(row.get("fits", True)),
                      loaded=bool(row.get("loaded")), in_flight=int(row.get("in_flight") or 0),
                      queued=int(row.get("queued") or 0), limit=int(row.get("concurrency_limit") or 1))
