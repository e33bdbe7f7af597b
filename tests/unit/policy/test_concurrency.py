"""The adaptive concurrency controller against simulated runtimes, in virtual time.

The runtime is processor sharing: with n requests in flight it produces ``rate(n)`` tokens per second in
all, shared equally; demand is closed-loop and never runs out (64 clients), so the limit is always what
holds requests back. Each test states a runtime's shape and where the limit must end up.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from app.policy.concurrency import AdaptiveLimit

Rate = Callable[[int], float]


def simulate(controller: AdaptiveLimit, rate: Rate, seconds: float, *, work: float = 32.0, dt: float = 0.002,
             noise: float = 0.0, waiting: bool = True) -> list[int]:
    """Run the runtime under the controller; returns the limit after every simulated second."""
    rng = random.Random(7)
    in_flight: list[list[float]] = []  # [remaining work, start time, limit at admission]
    history: list[int] = []
    t = 0.0
    next_mark = 1.0
    while t < seconds:
        while len(in_flight) < controller.limit:
            in_flight.append([work * (1 + noise * (rng.random() - 0.5)), t, controller.limit])
        share = rate(len(in_flight)) * dt / len(in_flight)
        for request in in_flight:
            request[0] -= share
        for request in [r for r in in_flight if r[0] <= 0]:
            in_flight.remove(request)
            controller.completed(t, t - request[1], work, int(request[2]), waiting)
        t += dt
        if t >= next_mark:
            history.append(controller.limit)
            next_mark += 1.0
    return history


def knee(cores: int, per_core: float = 250.0) -> Rate:
    """Throughput grows linearly up to ``cores`` requests, then stays flat (latency grows instead)."""
    return lambda n: per_core * min(n, cores)


def test_rises_while_throughput_grows_and_settles_at_the_knee() -> None:
    controller = AdaptiveLimit(minimum=1, maximum=32, initial=2)
    history = simulate(controller, knee(6), 120)
    assert max(history[:20]) >= 5  # climbed
    assert all(5 <= limit <= 8 for limit in history[-40:]), history[-40:]  # and stays near the knee (6)


def test_falls_when_latency_climbs_without_more_throughput() -> None:
    controller = AdaptiveLimit(minimum=1, maximum=32, initial=16)  # started far past a knee at 4
    history = simulate(controller, knee(4), 120)
    assert all(3 <= limit <= 6 for limit in history[-40:]), history


def test_sublinear_gains_stop_where_they_flatten() -> None:
    controller = AdaptiveLimit(minimum=1, maximum=32, initial=1)
    history = simulate(controller, lambda n: 1000 * (1 - 0.55 ** n), 120)  # +55%, +20%, +9%, +4%, …
    assert all(3 <= limit <= 7 for limit in history[-40:]), history


def test_a_runtime_slower_with_concurrency_is_run_one_at_a_time() -> None:
    controller = AdaptiveLimit(minimum=1, maximum=32, initial=4)  # 4 concurrent are 22%+ slower in all
    history = simulate(controller, lambda n: 1000 / (1 + 0.1 * (n - 1)), 120)
    assert all(limit <= 2 for limit in history[-40:]), history


def test_noise_does_not_throw_it_off() -> None:
    controller = AdaptiveLimit(minimum=1, maximum=32, initial=2)
    history = simulate(controller, knee(6), 180, noise=0.6)
    assert all(4 <= limit <= 9 for limit in history[-60:]), history[-60:]


def test_stays_within_bounds() -> None:
    capped = AdaptiveLimit(minimum=1, maximum=3, initial=2)
    assert max(simulate(capped, knee(8), 60)) == 3
    floored = AdaptiveLimit(minimum=2, maximum=32, initial=2)
    assert min(simulate(floored, lambda n: 1000 / n, 60)) == 2


def test_a_limit_nobody_reaches_is_left_alone() -> None:
    controller = AdaptiveLimit(minimum=1, maximum=32, initial=3)
    history = simulate(controller, knee(8), 60, waiting=False)  # requests never queued behind the limit
    assert set(history) == {3}


def test_completions_admitted_under_an_older_limit_do_not_count() -> None:
    controller = AdaptiveLimit(minimum=1, maximum=32, initial=2, min_samples=2)
    for i in range(10):
        assert not controller.completed(float(i), 0.5, 10, limit=7, waiting=True)
    assert controller.limit == 2


def test_bad_bounds_are_refused() -> None:
    try:
        AdaptiveLimit(minimum=4, maximum=2)
    except ValueError as exc:
        assert "1 ≤ min ≤ max" in str(exc)
    else:
        raise AssertionError("accepted min > max")
