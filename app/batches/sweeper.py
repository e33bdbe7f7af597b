"""What expired goes, on a schedule: the state store's expired records with every index entry of theirs (Redis
expires a record itself but not its entries), files whose record expired or was deleted, and the temporary files
of uploads a crash cut off. One sweeper per state directory — the process that holds the batch runner's lock — at
start and every ``GATEWAY_SWEEP_INTERVAL`` seconds: its cost follows what expired, not what is kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.batches.files import SPACE as FILES
from app.batches.files import Files
from app.batches.records import ACTIVE_INDEX, CANCELS, RESULTS
from app.batches.records import SPACE as BATCHES
from app.gateway.cache import SPACE as CACHE
from app.gateway.conversations import SPACE as RESPONSES
from app.state import StateStore, StoreDown

log = logging.getLogger("foundry_gateway.state")
SPACES = (RESPONSES, CACHE, FILES, BATCHES, ACTIVE_INDEX, RESULTS, CANCELS)


class Sweeper:
    def __init__(self, store: StateStore, files: Files, interval: float) -> None:
        self.store = store
        self.files = files
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self) -> int:
        """One sweep; how many records and files went."""
        gone = 0
        for space in SPACES:
            gone += await self.store.sweep(space)
        return gone + await self.files.sweep()

    async def _loop(self) -> None:
        while True:
            try:
                gone = await self.sweep()
                if gone:
                    log.info("swept %d expired records and files", gone)
            except StoreDown as exc:
                log.warning("sweeping expired state: %s; trying again later", exc)
            except Exception:  # a bug: logged whole, the next sweep tries again
                log.exception("sweeping expired state failed")
            await asyncio.sleep(self.interval)
