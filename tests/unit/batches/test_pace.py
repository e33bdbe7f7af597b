"""How many lines of a batch run at once: none while interactive requests run (one if the batch starves), one
just after, then one more per quiet line up to the maximum, back to one when interactive traffic returns."""

from __future__ import annotations

from app.batches.pace import Pace


def test_rises_only_while_interactive_traffic_leaves_room() -> None:
    pace = Pace(maximum=4)
    assert pace.allowed(interactive=0, since_interactive=60, since_progress=0) == 1
    for expected in (2, 3, 4, 4):
        pace.finished(quiet=True)
        assert pace.allowed(0, 60, 0) == expected
    assert pace.allowed(interactive=2, since_interactive=0, since_progress=0) == 0
    assert pace.allowed(interactive=0, since_interactive=0.2, since_progress=0) == 1  # it just ended
    pace.finished(quiet=False)
    assert pace.limit == 1 and pace.allowed(0, 60, 0) == 1


def test_a_starving_batch_still_moves_one_line() -> None:
    pace = Pace(maximum=4, starve_after=10)
    assert pace.allowed(interactive=3, since_interactive=0, since_progress=9.9) == 0
    assert pace.allowed(interactive=3, since_interactive=0, since_progress=10) == 1
