"""The key charged with what the request used: tokens against its quotas, its concurrency slot given back."""

from __future__ import annotations

import contextlib

from app.access.control import Access
from app.proxy.outcome import Outcome


class Charge:
    __slots__ = ("access", "cached_free")

    def __init__(self, access: Access, *, cached_free: bool) -> None:
        self.access = access
        self.cached_free = cached_free  # an answer the model did not generate costs the key nothing

    async def observe(self, outcome: Outcome) -> None:
        key = outcome.call.key
        if key is None:
            return
        if self.cached_free and outcome.cache is not None and not outcome.cache.generated:
            return
        with contextlib.suppress(Exception):  # a quota store failing now is logged and counted by Access
            await self.access.charge(key, outcome.call.slot, outcome.tokens("prompt_tokens"),
                                     outcome.tokens("completion_tokens"), metered=outcome.metered)
