"""The console's list of recent requests."""

from __future__ import annotations

from app.core.recent import Recent as RecentRequests
from app.proxy.outcome import Outcome


class Recent:
    """Feeds the console's list (``app.core.recent``)."""

    __slots__ = ("recent",)

    def __init__(self, recent: RecentRequests) -> None:
        self.recent = recent

    def observe(self, outcome: Outcome) -> None:
        call = outcome.call
        self.recent.observe(status=outcome.status, ttft_s=outcome.ttft, route=call.endpoint, model=outcome.model,
                            task=outcome.task, reason=outcome.reason or "refused", why=outcome.explanation,
                            node=outcome.node, duration_s=outcome.duration, request_id=call.request_id,
                            key=call.key.name if call.key is not None else None)
