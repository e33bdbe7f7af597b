"""``Lease`` (``app.proxy.stages.backend``) on its own: what an attempt held is given back and then exactly one
verdict on the place is said, by how the attempt ended — also when giving back fails."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from app.core.errors import FailureCause, GatewayError, Retry
from app.core.registry import build_registry
from app.policy.breaker import Breaker, Permit
from app.proxy.exchange import Exchange
from app.proxy.outcome import Call
from app.proxy.stages.backend import Backend, Place

ENTRY = build_registry([{"name": "m", "task": "chat", "min_ram_gb": 1}]).entries[0]


class Recording(Backend):
    def __init__(self) -> None:
        super().__init__(SimpleNamespace(breaker=Breaker(3, 30.0)))  # type: ignore[arg-type]
        self.said: list[str] = []

    def failed(self, permit: Permit, where: Place, retry: Retry) -> None:
        self.said.append("failed")

    def refused(self, permit: Permit, where: Place, ex: Exchange, err: GatewayError) -> None:
        self.said.append("refused")

    def done(self, permit: Permit, where: Place, ex: Exchange) -> None:
        self.said.append("done")


def _broken_release() -> None:
    raise OSError("the staged upload could not be removed")


@pytest.mark.parametrize(("error", "verdict"), [
    (None, "done"),
    (Retry(GatewayError(502, "x"), FailureCause.UPSTREAM_ERROR, status=502), "failed"),
    (GatewayError(400, "bad"), "refused"),
])
def test_the_verdict_is_said_even_when_giving_back_fails(error: BaseException | None, verdict: str) -> None:
    backend = Recording()
    entry = ENTRY
    lease = backend.lease(Exchange(Call.of("chat", "r1")), Place(entry), Permit("m", 0, False))
    released: list[str] = []
    lease.held.releases += [lambda: released.append("slot"), _broken_release]  # given back last taken first
    with pytest.raises(OSError):
        asyncio.run(lease.close(error))
    assert backend.said == [verdict] and released == []  # the broken release ran first; the verdict still came


def test_a_probe_permit_is_handed_back_when_the_client_leaves_and_giving_back_fails() -> None:
    backend = Recording()
    breaker: Any = backend.breaker
    breaker.failure(Permit("m", 0, False), "x")
    entry = ENTRY
    lease = backend.lease(Exchange(Call.of("chat", "r1")), Place(entry), Permit("m", 0, True))
    lease.held.releases.append(_broken_release)
    circuit = breaker._circuits["m"]
    circuit.probing = True
    with pytest.raises(OSError):
        asyncio.run(lease.close(asyncio.CancelledError()))
    assert circuit.probing is False  # cancelled: the next request may probe
