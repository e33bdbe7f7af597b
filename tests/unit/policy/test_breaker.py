"""The circuit breaker's state machine on its own, in virtual time: closed → open after N consecutive
failures → half-open after the cool-down with exactly one probe → closed on the probe's success, open
again on its failure; resets from the supervisor and from health checks."""

from __future__ import annotations

from app.policy.breaker import Breaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 3, cooldown: float = 30.0) -> tuple[Breaker, Clock, list[tuple[str, bool]]]:
    clock = Clock()
    changes: list[tuple[str, bool]] = []
    return Breaker(threshold, cooldown, clock=clock, on_change=lambda m, o: changes.append((m, o))), clock, changes


def fail(b: Breaker, model: str = "m", times: int = 1, error: str = "http_500") -> None:
    for _ in range(times):
        permit = b.admit(model)
        assert permit is not None
        b.failure(permit, error)


def test_opens_after_consecutive_failures_only() -> None:
    b, _, changes = breaker(threshold=3)
    fail(b, times=2)
    permit = b.admit("m")
    assert permit is not None
    b.success(permit)  # a success in between resets the count
    fail(b, times=2)
    assert b.state("m") is State.CLOSED and "m" not in b.skipped()
    fail(b)
    assert b.state("m") is State.OPEN and b.admit("m") is None
    assert "3 failures" in b.skipped()["m"] and "http_500" in b.skipped()["m"]
    assert changes == [("m", True)]


def test_half_open_lets_exactly_one_probe_through() -> None:
    b, clock, _ = breaker(threshold=1, cooldown=30)
    fail(b)
    clock.now += 29.9
    assert b.admit("m") is None
    clock.now += 0.2
    assert "m" not in b.skipped()  # routable again: the next request is the probe
    probe = b.admit("m")
    assert probe is not None and probe.probe and b.state("m") is State.HALF_OPEN
    assert b.admit("m") is None and "probe" in b.skipped()["m"]  # everyone else waits for its verdict
    b.success(probe)
    assert b.state("m") is State.CLOSED and b.admit("m") is not None


def test_a_failed_probe_reopens_at_once() -> None:
    b, clock, changes = breaker(threshold=3, cooldown=10)
    fail(b, times=3)
    clock.now += 10
    probe = b.admit("m")
    assert probe is not None
    b.failure(probe, "timeout")
    assert b.state("m") is State.OPEN and b.admit("m") is None  # one failure, not three
    assert "timeout" in b.skipped()["m"]
    clock.now += 10
    assert b.admit("m") is not None  # the next cool-down ends, the next probe
    assert changes == [("m", True), ("m", False), ("m", True), ("m", False)]


def test_a_probe_without_a_verdict_frees_the_probe_slot() -> None:
    b, clock, _ = breaker(threshold=1, cooldown=5)
    fail(b)
    clock.now += 5
    probe = b.admit("m")
    assert probe is not None
    b.cancel(probe)  # e.g. the client went away: says nothing about the model
    assert b.state("m") is State.HALF_OPEN and b.admit("m") is not None


def test_late_results_of_requests_started_before_the_opening_do_not_decide() -> None:
    b, _clock, _ = breaker(threshold=1, cooldown=5)
    early = b.admit("m")
    assert early is not None
    fail(b)  # opens
    b.success(early)  # a request that started before the failure ends well: the breaker stays open
    assert b.state("m") is State.OPEN


def test_reset_closes_every_circuit_and_transport_reset_only_transport_failures() -> None:
    b, _, changes = breaker(threshold=1)
    fail(b, "a", error="connect")
    b.failure(b.admit("b") or _no(), "connect", transport=True)
    fail(b, "c", error="http_500")
    b.reset_transport_failures()  # a health check reached the upstream: connection failures are moot
    assert b.state("b") is State.CLOSED
    assert b.state("a") is State.OPEN and b.state("c") is State.OPEN
    b.reset()  # the runtime restarted: everything starts afresh
    assert not b.skipped() and all(b.state(m) is State.CLOSED for m in "abc")
    assert ("b", False) in changes and ("c", False) in changes


def test_version_changes_with_every_state_change() -> None:
    b, clock, _ = breaker(threshold=1, cooldown=1)
    v0 = b.version
    fail(b)
    v1 = b.version
    clock.now += 1
    b.skipped()
    assert v0 != v1 != b.version


def _no() -> object:
    raise AssertionError("admit refused")
