"""How many of a batch's lines may run at once: batches use the capacity interactive traffic leaves.

- While interactive requests run, no new line starts (the ones running finish: a line's answer is one JSON
  body, so the runtime would not notice a line stopped midway and would finish it anyway) — unless the batch has
  waited ``starve_after`` seconds for a line to finish: then one, so a batch under endless traffic still moves.
- Within ``quiet_after`` seconds of the last interactive request, one line at a time.
- In quiet time the limit rises by one with each line that finished with no interactive request meanwhile, up to
  ``GATEWAY_BATCH_MAX_CONCURRENCY``; a line that saw one brings it back to one.

The batch priority class still applies underneath: a batch line waiting for a model's slot yields to every
interactive request waiting for it (``app.policy.limiter``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Pace:
    maximum: int
    quiet_after: float = 1.0
    starve_after: float = 10.0
    limit: int = 1

    def allowed(self, interactive: int, since_interactive: float, since_progress: float) -> int:
        """Lines that may be in flight now, given the interactive requests running, the seconds since one last
        started or ended, and the seconds since a line of this batch last finished."""
        if interactive > 0:
            return 1 if since_progress >= self.starve_after else 0
        if since_interactive < self.quiet_after:
            return 1
        return self.limit

    def finished(self, quiet: bool) -> None:
        """A line finished; ``quiet``: no interactive request started or ran while it did."""
        self.limit = min(self.maximum, self.limit + 1) if quiet else 1
