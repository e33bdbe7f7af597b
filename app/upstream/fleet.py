"""The front's view of its nodes: who they are (``GATEWAY_NODES``, names re-resolved: a Kubernetes headless
Service name is one node per address), how they are (their ``/v1/node`` status, polled often), and the
requests this front has on each right now.

A node that refuses a connection is ejected at once — by the request that found out or by the poll — and comes
back when a poll succeeds. A node whose requests keep failing (timeouts, 5xx, bad answers, stalls:
``GATEWAY_NODE_EJECT_AFTER`` in a row) is an outlier, as Envoy calls it: ejected for ``GATEWAY_NODE_EJECT_SECONDS``
(doubled at each ejection in a row), however well it answers its status polls meanwhile — a hung runtime behind
a live gateway answers those. Each node is reached through its own pool of keep-alive connections (an
``Upstream`` of kind ``openai``: a node is an OpenAI-compatible gateway), so the front forwards and streams
bytes exactly as a node does to its runtime.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.core.settings import Settings
from app.policy.placement import ModelState, NodeView
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
    """Node name (``address:port``) → base URL, for each configured URL and each address of its host (a name
    that does not resolve now stands for itself)."""
    nodes: dict[str, str] = {}
    for url, found in resolve_each(urls, resolver).items():
        nodes.update(found or resolve_each([url], lambda host, port: [host])[url] or {})
    return nodes


def resolve_each(urls: Iterable[str], resolver: Resolver = resolve_host) -> dict[str, dict[str, str] | None]:
    """Per configured URL: its nodes, or None when its name did not resolve (keep what it had)."""
    out: dict[str, dict[str, str] | None] = {}
    for url in urls:
        parts = urlsplit(url.rstrip("/"))
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
        addresses = [host] if _is_address(host) else resolver(host, port)
        nodes = {}
        for address in addresses:
            shown = f"[{address}]" if ":" in address else address
            nodes[f"{shown}:{port}"] = f"{parts.scheme}://{shown}:{port}"
        out[url] = nodes or None
    return out


def _is_address(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


@dataclass
class Node:
    name: str
    url: str
    upstream: Upstream
    source: str = ""  # the GATEWAY_NODES entry it came from
    healthy: bool = False
    why_down: str = "not polled yet"
    models: dict[str, ModelState] = field(default_factory=dict)
    front_in_flight: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # requests that failed in a row
    ejections: int = 0  # outlier ejections in a row (each one longer)
    ejected_until: float = 0.0  # no re-admission before (monotonic)

    def view(self) -> NodeView:
        return NodeView(self.name, self.healthy, dict(self.models), dict(self.front_in_flight), self.why_down)


class Fleet:
    def __init__(self, settings: Settings, resolver: Resolver = resolve_host,
                 on_change: Callable[[str, bool], None] = lambda node, up: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.resolver = resolver
        self.on_change = on_change
        self.clock = clock
        self.turn = 0  # placement's tie-breaker: equally good nodes take turns
        self.nodes: dict[str, Node] = {}
        self.resolved_at = 0.0
        self.refresh_names()

    # --- membership ---------------------------------------------------------------------------------------

    def refresh_names(self) -> list[Node]:
        """Re-resolve ``GATEWAY_NODES`` (blocking DNS) and apply it; returns the nodes that left."""
        return self.apply(resolve_each(self.settings.nodes, self.resolver))

    def apply(self, resolved: dict[str, dict[str, str] | None]) -> list[Node]:
        """New addresses join (unhealthy until polled); gone ones leave — but a name that failed to resolve
        keeps its nodes (a DNS hiccup is not every pod leaving). Returns the nodes that left, to close."""
        wanted: dict[str, tuple[str, str]] = {}
        for source, found in resolved.items():
            if found is None:
                wanted.update({n.name: (n.url, source) for n in self.nodes.values() if n.source == source})
                if not any(n.source == source for n in self.nodes.values()):  # never resolved: try the name itself
                    unresolved = expand([source], lambda _host, _port: [])
                    wanted.update({name: (url, source) for name, url in unresolved.items()})
            else:
                wanted.update({name: (url, source) for name, url in found.items()})
        for name, (url, source) in wanted.items():
            if name not in self.nodes:
                self.nodes[name] = Node(name, url, Upstream(self.settings, base_url=url, kind="openai"), source)
                log.info("node %s joined (%s)", name, url)
        gone = [self.nodes.pop(name) for name in [n for n in self.nodes if n not in wanted]]
        for node in gone:
            log.warning("node %s left (no longer among the names' addresses)", node.name)
            self.on_change(node.name, False)
        self.resolved_at = time.monotonic()
        return gone

    def views(self) -> list[NodeView]:
        return [node.view() for node in self.nodes.values()]

    def next_turn(self) -> int:
        self.turn += 1
        return self.turn

    # --- health ---------------------------------------------------------------------------------------------

    def eject(self, name: str, why: str) -> None:
        node = self.nodes.get(name)
        if node is None:
            return
        node.why_down = why
        if node.healthy:
            node.healthy = False
            log.warning("node %s ejected: %s", name, why)
            self.on_change(name, False)

    def failed(self, name: str, why: str) -> None:
        """A request failed on the node (not the client's fault, not a refusal): an outlier after enough in a row."""
        node = self.nodes.get(name)
        if node is None:
            return
        node.failures += 1
        if node.failures >= self.settings.node_eject_after and node.healthy:
            node.ejections += 1
            seconds = self.settings.node_eject_seconds * 2 ** min(node.ejections - 1, 3)
            node.ejected_until = self.clock() + seconds
            self.eject(name, f"ejected for {seconds:g}s after {node.failures} consecutive failures (last: {why})")

    def succeeded(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is not None:
            node.failures = 0
            node.ejections = 0

    def may_admit(self, node: Node) -> bool:
        """Whether a good poll may bring the node back (an ejected outlier waits out its time)."""
        return self.clock() >= node.ejected_until

    async def poll(self, node: Node) -> None:
        try:
            answer = await node.upstream.client.get(f"{node.url}/v1/node", headers=node.upstream.headers,
                                                    timeout=node.upstream.quick_timeout)
            answer.raise_for_status()
            status = answer.json()
            node.models = {row["id"]: _state(row) for row in status["models"]}
            ready = bool(status.get("ready"))
        except (httpx.HTTPError, ValueError, KeyError, TypeError, OverflowError) as exc:
            self.eject(node.name, f"status poll failed: {exc.__class__.__name__}")
            return
        if ready and not node.healthy:
            if not self.may_admit(node):
                return
            log.info("node %s admitted", node.name)
            node.healthy, node.why_down, node.failures = True, "", 0
            self.on_change(node.name, True)
        elif not ready:
            self.eject(node.name, "not ready")

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(node) for node in list(self.nodes.values())))

    async def run(self) -> None:
        """Poll every node every ``GATEWAY_NODE_POLL_INTERVAL``; re-resolve names every
        ``GATEWAY_NODE_RESOLVE_INTERVAL``."""
        while True:
            try:
                if time.monotonic() - self.resolved_at >= self.settings.node_resolve_interval:
                    resolved = await asyncio.to_thread(resolve_each, self.settings.nodes, self.resolver)
                    for node in self.apply(resolved):  # applied here, on the loop: requests see one state
                        await node.upstream.aclose()
                await self.poll_all()
            except Exception:  # a bug here must not end the polling: ejected nodes would never come back
                log.exception("fleet poll failed; trying again")
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
                      queued=int(row.get("queued") or 0), limit=int(row.get("concurrency_limit") or 1),
                      cooling_down=bool(row.get("cooling_down")))
