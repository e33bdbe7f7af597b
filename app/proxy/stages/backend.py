"""Where an attempt runs: this gateway's own runtime (:class:`LocalBackend`) or the nodes of a front
(:class:`NodeBackend`). The proxy's flow is the same for both; what differs is here, as overrides — which places a
route gives (models; in front mode each on the nodes placement ranks for it), what an attempt holds while it runs
(limiter slots, the model's turn on the runtime and its in-use mark; or the front's own in-flight count on the
node), how a model gets ready (loaded on demand, waiting for a restarting runtime; a node does that itself), and
whose fault a failure is (the model's, for the circuit breaker; or the node's, for outlier ejection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType

import httpx

from app.core.errors import FailureCause, GatewayError, Retry
from app.core.registry import ModelEntry
from app.gateway import Gateway
from app.policy.breaker import Permit
from app.policy.limiter import Limiter
from app.policy.placement import place
from app.policy.routing import Route
from app.proxy.exchange import Exchange, clock
from app.upstream.client import Upstream


@dataclass(frozen=True, slots=True)
class Place:
    """One place to try: a model, and in front mode the node, with the placement's reason for it."""

    entry: ModelEntry
    node: str | None = None
    why: str = ""

    @property
    def where(self) -> str:
        return f"{self.entry.name} on node {self.node}" if self.node else self.entry.name


class Held:
    """What one attempt holds, given back on every way out: the upstream responses first (the upstream stops
    generating), then staged files, then whatever else was taken, last taken first."""

    __slots__ = ("files", "releases", "responses", "slot")

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []
        self.files: list[Path] = []  # uploads staged for the runtime to read
        self.releases: list[Callable[[], None]] = []
        self.slot: tuple[Limiter, int] | None = None  # the model's limiter, and its limit when the slot was given

    async def give_back(self) -> None:
        try:
            for response in self.responses:
                with contextlib.suppress(Exception):
                    await response.aclose()
        finally:
            for path in self.files:
                path.unlink(missing_ok=True)
            for release in reversed(self.releases):
                release()


class Sending:
    """One attempt's sends: the second chances a local runtime gives (once each)."""

    __slots__ = ("recovered", "reloaded", "restarts")

    def __init__(self, restarts: int) -> None:
        self.recovered = False  # waited for a restarting runtime already
        self.reloaded = False  # loaded again after the runtime said "not loaded"
        self.restarts = restarts  # the runtime's restart count when the attempt began


class Chance(Enum):
    """Why an attempt might send its request once more, on the same place."""

    REFUSED = "refused"  # the connection never opened
    BROKE = "broke"  # the connection broke before any answer
    NOT_LOADED = "not_loaded"  # the runtime said the model is not loaded


class Lease:
    """One attempt's hold on a place, from :meth:`Backend.lease`: what it sends to and with, its second chances,
    and — on the way out — what it held given back, then the one verdict on the place (breaker, outlier
    ejection) by how the attempt ended."""

    __slots__ = ("backend", "ex", "held", "permit", "sending", "where")

    def __init__(self, backend: Backend, ex: Exchange, where: Place, permit: Permit) -> None:
        self.backend = backend
        self.ex = ex
        self.where = where
        self.permit = permit
        self.held = Held()
        self.sending = backend.sending()

    async def admit(self) -> Upstream:
        """Take the place's admission (limiter slots, the model's turn; queue waits counted in the exchange);
        the upstream to send to."""
        await self.backend.admit(self.ex, self.where, self.held)
        return self.backend.upstream(self.where)

    async def ready(self) -> str:
        """The model made ready to answer (or ``Retry``); its id on the upstream."""
        await self.backend.ready(self.ex, self.where, self.sending)
        return self.backend.upstream_id(self.where)

    async def again(self, chance: Chance) -> bool:
        """Send once more on this place? Each second chance is given at most once per attempt."""
        if chance is Chance.NOT_LOADED:
            return self.backend.reload(self.where, self.sending)
        return await self.backend.reconnect(self.ex, self.sending, refused=chance is Chance.REFUSED)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        _traceback: TracebackType | None) -> None:
        await self.close(error)

    async def close(self, error: BaseException | None) -> None:
        backend, ex, where = self.backend, self.ex, self.where
        try:
            if error is None:
                backend.completed(ex, where, self.held)
        finally:
            try:
                await self.held.give_back()
            finally:  # said however the give-back went: a probe's permit never stays out
                if error is None:
                    backend.done(self.permit, where, ex)
                elif isinstance(error, Retry):
                    backend.failed(self.permit, where, error)
                elif isinstance(error, GatewayError):
                    backend.refused(self.permit, where, ex, error)
                else:  # the client left, or a bug: no verdict on the place
                    backend.breaker.cancel(self.permit)


class Backend:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.breaker = gateway.breaker

    def places(self, route: Route) -> list[Place]:
        return [Place(entry) for entry in (route.model, *route.fallbacks)]

    def lease(self, ex: Exchange, where: Place, permit: Permit) -> Lease:
        """Hold ``where`` for one attempt: ``async with backend.lease(...) as lease`` (see :class:`Lease`)."""
        return Lease(self, ex, where, permit)

    async def admit(self, ex: Exchange, where: Place, held: Held) -> None:
        """Take what the attempt holds while it runs (queue waits counted in ``ex``)."""
        raise NotImplementedError

    def sending(self) -> Sending:
        return Sending(0)

    async def ready(self, ex: Exchange, where: Place, sending: Sending) -> None:
        """Make the model ready to answer (or raise ``Retry``)."""

    def upstream(self, where: Place) -> Upstream:
        return self.gw.upstream

    def upstream_id(self, where: Place) -> str:
        return where.entry.name

    def default_max_tokens(self, where: Place) -> int | None:
        return None

    def forwarded(self, ex: Exchange) -> list[tuple[str, str]] | None:
        """Headers passed on with the request (a front tells its node the priority and the request's id)."""
        return None

    def first_byte_timeout(self) -> float:
        return self.gw.settings.first_byte_timeout

    async def reconnect(self, ex: Exchange, sending: Sending, *, refused: bool) -> bool:
        """The connection failed before an answer (``refused``: it never opened): send again?"""
        return False

    def reload(self, where: Place, sending: Sending) -> bool:
        """The runtime said the model is not loaded: load it and send again?"""
        return False

    def missing(self, where: Place) -> None:
        """The upstream said 404 for the model."""

    def completed(self, ex: Exchange, where: Place, held: Held) -> None:
        """The attempt's answer was relayed."""

    # --- whose fault -------------------------------------------------------------------------------------------

    def failed(self, permit: Permit, where: Place, retry: Retry) -> None:
        """A failure before content: the next place may take over."""
        raise NotImplementedError

    def refused(self, permit: Permit, where: Place, ex: Exchange, err: GatewayError) -> None:
        """A failure the client hears as it is (no fallback)."""
        raise NotImplementedError

    def done(self, permit: Permit, where: Place, ex: Exchange) -> None:
        """The attempt ended with its answer relayed (whole, or broken mid-stream)."""
        raise NotImplementedError

    def verdict(self, permit: Permit, ex: Exchange, *, healthy: bool, error: str) -> None:
        if not ex.sent:
            self.breaker.cancel(permit)  # refused before the upstream saw it (queue full, deadline): no verdict
        elif healthy:
            self.breaker.success(permit)
        else:
            self.breaker.failure(permit, f"broken: {error or 'the upstream failed mid-response'}")


class LocalBackend(Backend):
    """This gateway's own runtime: the model's admission (its limiter, its turn when models cannot co-reside,
    its in-use mark), loading on demand, waiting for a restarting managed runtime, the circuit breaker."""

    async def admit(self, ex: Exchange, where: Place, held: Held) -> None:
        gw = self.gw
        entry = where.entry
        model_limiter = gw.admission.limiter(entry)
        for limiter in (gw.admission.overall, model_limiter):
            ex.queue_wait += await limiter.acquire(ex.call.priority)
            held.releases.append(limiter.release)
        held.slot = (model_limiter, model_limiter.limit)
        if gw.upstream.manages_models:  # models that cannot co-reside take turns, grouped (no swap thrash)
            ex.queue_wait += await gw.residency.enter(entry.name)
            held.releases.append(lambda: gw.residency.leave(entry.name))
        gw.inventory.acquire(entry)  # in use from now on: never unloaded under this request
        held.releases.append(lambda: gw.inventory.release(entry))

    def sending(self) -> Sending:
        return Sending(self.gw.runtime.restarts)

    async def ready(self, ex: Exchange, where: Place, sending: Sending) -> None:
        runtime = self.gw.runtime
        while True:
            if not sending.recovered and not runtime.serving:  # a managed runtime restarts: wait for it
                sending.recovered = await runtime.recovered(ex.call.deadline)
            try:
                ex.load_wait += await self.gw.inventory.ensure_loaded(where.entry)
                return
            except GatewayError as err:
                if err.code != "upstream_unavailable":
                    raise Retry(err, FailureCause.LOAD_FAILED) from None
                if sending.recovered or not await runtime.recovered(ex.call.deadline):
                    raise Retry(err, FailureCause.CONNECT, transport=True) from None
                sending.recovered = True

    def upstream_id(self, where: Place) -> str:
        return self.gw.inventory.upstream_id(where.entry)

    def default_max_tokens(self, where: Place) -> int | None:
        if not self.gw.upstream.profile.needs_max_tokens:
            return None
        return where.entry.max_tokens_default(self.gw.settings.default_max_tokens)

    async def reconnect(self, ex: Exchange, sending: Sending, *, refused: bool) -> bool:
        """A managed runtime that just died comes back in about a second: wait for it rather than fail (once per
        attempt). A connection that broke before any answer is sent again only if the runtime was restarted
        meanwhile — the old one took the request down with it, so nothing is generated twice."""
        runtime = self.gw.runtime
        if sending.recovered or not await runtime.recovered(ex.call.deadline):
            return False
        sending.recovered = True
        return refused or runtime.restarts != sending.restarts

    def reload(self, where: Place, sending: Sending) -> bool:
        if sending.reloaded or not self.gw.upstream.manages_models:
            return False
        sending.reloaded = True
        self.gw.inventory.mark_unloaded(where.entry)  # unloaded behind our back: load and try once more
        return True

    def missing(self, where: Place) -> None:
        self.gw.inventory.mark_missing(where.entry)

    def completed(self, ex: Exchange, where: Place, held: Held) -> None:
        if held.slot is None or ex.status >= 400 or ex.broken or ex.aborted:
            return
        limiter, limit = held.slot
        tokens = (ex.usage or {}).get("completion_tokens")
        self.gw.admission.completed(where.entry, limiter, clock() - ex.sent_at,
                                    tokens if isinstance(tokens, int) and tokens > 0 else 1, limit)

    def failed(self, permit: Permit, where: Place, retry: Retry) -> None:
        if not retry.cause.failing:  # busy (429), not failing
            self.breaker.cancel(permit)
        else:
            self.breaker.failure(permit, f"{retry.label}: {retry.error.message}", transport=retry.transport)

    def refused(self, permit: Permit, where: Place, ex: Exchange, err: GatewayError) -> None:
        self.verdict(permit, ex, healthy=err.status < 500, error=err.message)

    def done(self, permit: Permit, where: Place, ex: Exchange) -> None:
        self.verdict(permit, ex, healthy=not ex.broken, error=ex.error)


class NodeBackend(Backend):
    """The nodes of a front (``GATEWAY_NODES``): each model on the nodes placement ranks for it; the node does the
    model's admission, loading and limits, the front bounds its own in-flight total and counts what it sent where.
    A node's failure says nothing of the model on the other nodes: it ejects the node (at once for a refused
    connection, after several in a row otherwise), never the model's breaker."""

    def places(self, route: Route) -> list[Place]:
        fleet = self.gw.fleet
        assert fleet is not None
        views, turn = fleet.views(), fleet.next_turn()
        places: list[Place] = []
        refusals = []
        for entry in (route.model, *route.fallbacks):
            placement = place(entry.name, views, turn)
            reasons = {name: reason for name, _, reason in placement.verdicts}
            places += [Place(entry, name, reasons[name]) for name in placement.order]
            refusals += [f"{entry.name} on {name}: {reason}" for name, decision, reason in placement.verdicts
                         if decision == "skipped"]
        if not places:  # nodes down or full: a node coming back is polled within seconds
            raise GatewayError(503, f"No node can serve this request now ({'; '.join(refusals) or 'no nodes'}).",
                               code="no_viable_node", headers={"retry-after": "5"})
        return places

    async def admit(self, ex: Exchange, where: Place, held: Held) -> None:
        fleet, node, model = self.gw.fleet, where.node, where.entry.name
        assert fleet is not None and node is not None
        if node not in fleet.nodes:  # left the fleet (re-resolution) since the placement
            raise Retry(GatewayError(503, f"Node {node} left the fleet.", code="upstream_unavailable"),
                        FailureCause.CONNECT)
        overall = self.gw.admission.overall
        ex.queue_wait += await overall.acquire(ex.call.priority)
        held.releases.append(overall.release)
        fleet.started(node, model)
        held.releases.append(lambda: fleet.ended(node, model))

    def upstream(self, where: Place) -> Upstream:
        assert self.gw.fleet is not None and where.node is not None
        return self.gw.fleet.nodes[where.node].upstream

    def forwarded(self, ex: Exchange) -> list[tuple[str, str]] | None:
        return [("x-priority", ex.call.priority), ("x-request-id", ex.call.request_id)]

    def first_byte_timeout(self) -> float:
        # a node may queue the request and load the model before its first byte: its own timers bound those
        settings = self.gw.settings
        return settings.first_byte_timeout + settings.queue_timeout + settings.load_timeout

    def completed(self, ex: Exchange, where: Place, held: Held) -> None:
        assert where.node is not None
        self.gw.metrics.node_requests.labels(where.node, "failed" if ex.broken else "ok").inc()

    def failed(self, permit: Permit, where: Place, retry: Retry) -> None:
        self.breaker.cancel(permit)
        fleet = self.gw.fleet
        assert fleet is not None and where.node is not None
        if retry.transport:
            fleet.eject(where.node, f"{retry.label}: {retry.error.message}")
        elif retry.cause.outlier:  # it answers, but not in time or not well; busy (429) is not failing
            fleet.failed(where.node, f"{retry.label}: {retry.error.message}")

    def refused(self, permit: Permit, where: Place, ex: Exchange, err: GatewayError) -> None:
        self.verdict(permit, ex, healthy=True, error=err.message)

    def done(self, permit: Permit, where: Place, ex: Exchange) -> None:
        self.verdict(permit, ex, healthy=True, error=ex.error)  # a node that died mid-stream: not the model's fault
        fleet = self.gw.fleet
        assert fleet is not None and where.node is not None
        if ex.broken and ex.status == 504:  # it stalled mid-answer (a connection that broke: the refusals tell)
            fleet.failed(where.node, f"stalled: {ex.error}")
        elif ex.sent and not ex.broken:
            fleet.succeeded(where.node)
