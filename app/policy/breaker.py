"""Circuit breaker per model: skip a model that keeps failing, and test it with one request before
trusting it again.

  CLOSED ──N consecutive failures──▶ OPEN ──cool-down over──▶ HALF_OPEN ──probe succeeds──▶ CLOSED
                                      ▲                           │
                                      └──────probe fails──────────┘

In HALF_OPEN exactly one request (the probe) goes to the model; the others are routed elsewhere until
its verdict. A probe that ends without one (the client left) frees the probe slot. Results of
requests that started before the model opened do not count: only the probe decides.

The breaker also learns from outside: the supervisor restarting the runtime closes every circuit
(``reset``), and a health check that reaches the upstream closes the circuits opened by connection
failures alone (``reset_transport_failures``) — those said nothing about the models themselves.

Pure state with an injected clock, so the state machine is tested in virtual time.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class _Circuit:
    state: State = State.CLOSED
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    transport_only: bool = True  # every failure since the last success was a connection failure
    last_error: str = ""
    epoch: int = 0  # bumped on every opening: permits from an older epoch do not decide


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to send one request to a model; hand it back with its outcome."""

    model: str
    epoch: int
    probe: bool


class Breaker:
    def __init__(
        self,
        failures: int,
        cooldown: float,
        on_change: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.on_change = on_change
        self.clock = clock
        self.version = 0  # changes with any state change (routing decisions are memoised on it)
        self._circuits: dict[str, _Circuit] = {}
        self._skipped: dict[str, str] = {}
        self._next_expiry = float("inf")

    # --- asking ----------------------------------------------------------------------------------

    def state(self, model: str) -> State:
        self._expire()
        circuit = self._circuits.get(model)
        return circuit.state if circuit else State.CLOSED

    def skipped(self) -> Mapping[str, str]:
        """Models to route around now, each with the reason."""
        self._expire()
        return self._skipped

    def admit(self, model: str) -> Permit | None:
        """A permit to try ``model``, or None while it is open or its probe is out."""
        circuit = self._circuits.get(model)
        if circuit is None:
            return Permit(model, 0, False)
        self._expire()
        if circuit.state is State.CLOSED:
            return Permit(model, circuit.epoch, False)
        if circuit.state is State.OPEN or circuit.probing:
            return None
        circuit.probing = True
        self._changed(model, circuit)
        return Permit(model, circuit.epoch, True)

    # --- outcomes ---------------------------------------------------------------------------------

    def success(self, permit: Permit) -> None:
        circuit = self._circuits.get(permit.model)
        if circuit is None or permit.epoch != circuit.epoch:
            return
        if circuit.state is State.CLOSED:
            circuit.failures = 0
            circuit.transport_only = True
        elif permit.probe:
            self._close(permit.model, circuit)

    def failure(self, permit: Permit, error: str, *, transport: bool = False) -> None:
        """Count a failure; ``transport``: the upstream could not be reached at all."""
        circuit = self._circuits.setdefault(permit.model, _Circuit())
        if permit.epoch != circuit.epoch:
            return
        circuit.last_error = error
        circuit.transport_only = circuit.transport_only and transport
        if circuit.state is State.CLOSED:
            circuit.failures += 1
            if circuit.failures >= self.threshold:
                self._open(permit.model, circuit)
        elif permit.probe:
            self._open(permit.model, circuit)

    def cancel(self, permit: Permit) -> None:
        """The attempt ended without a verdict on the model."""
        circuit = self._circuits.get(permit.model)
        if circuit is not None and permit.probe and permit.epoch == circuit.epoch and circuit.probing:
            circuit.probing = False
            self._changed(permit.model, circuit)

    # --- news from outside -------------------------------------------------------------------------

    def reset(self) -> None:
        """Close every circuit (the runtime was restarted: old failures say nothing about it)."""
        for model, circuit in list(self._circuits.items()):
            if circuit.state is not State.CLOSED or circuit.failures:
                self._close(model, circuit)

    def reset_transport_failures(self) -> None:
        """Close circuits opened by connection failures alone (the upstream answers again)."""
        for model, circuit in list(self._circuits.items()):
            if circuit.transport_only and (circuit.state is not State.CLOSED or circuit.failures):
                self._close(model, circuit)

    # --- transitions ---------------------------------------------------------------------------------

    def _open(self, model: str, circuit: _Circuit) -> None:
        was_open = circuit.state is not State.CLOSED
        circuit.state = State.OPEN
        circuit.probing = False
        circuit.epoch += 1
        circuit.open_until = self.clock() + self.cooldown
        self._next_expiry = min(self._next_expiry, circuit.open_until)
        count = f"{circuit.failures} failures" if not was_open else "a failed probe"
        circuit.failures = 0
        self._changed(model, circuit, f"cooling down after {count} (last: {circuit.last_error})")
        if self.on_change:
            self.on_change(model, True)

    def _close(self, model: str, circuit: _Circuit) -> None:
        was_open = circuit.state is State.OPEN
        circuit.state = State.CLOSED
        circuit.failures = 0
        circuit.probing = False
        circuit.transport_only = True
        circuit.epoch += 1
        self._changed(model, circuit)
        if was_open and self.on_change:
            self.on_change(model, False)

    def _expire(self) -> None:
        """OPEN circuits whose cool-down is over become HALF_OPEN (checked lazily, cheaply)."""
        now = self.clock()
        if now < self._next_expiry:
            return
        self._next_expiry = float("inf")
        for model, circuit in self._circuits.items():
            if circuit.state is not State.OPEN:
                continue
            if circuit.open_until <= now:
                circuit.state = State.HALF_OPEN
                self._changed(model, circuit)
                if self.on_change:
                    self.on_change(model, False)
            else:
                self._next_expiry = min(self._next_expiry, circuit.open_until)

    def _changed(self, model: str, circuit: _Circuit, why: str = "") -> None:
        self.version += 1
        skipped = dict(self._skipped)
        if circuit.state is State.OPEN:
            skipped[model] = why or skipped.get(model, "cooling down after repeated failures")
        elif circuit.state is State.HALF_OPEN and circuit.probing:
            skipped[model] = f"a probe request is testing it after failures (last: {circuit.last_error})"
        else:
            skipped.pop(model, None)
        self._skipped = skipped  # a new dict: snapshots handed out earlier stay as they were
