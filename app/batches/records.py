"""Batches as records in the state store (space ``batches``, owned by the key that created them), an index of the
active ones per runner (space ``batches_active``, so the runner reads only those, however many batches ended
before), and each finished line's result (space ``batch_results``, one record a line, keyed by its position):
what a restarted gateway resumes from. A line's result is written under the same key however often the line runs,
so the output holds each ``custom_id`` once. A batch's record lives ``GATEWAY_BATCHES_TTL`` after it ended. Fields
starting with ``x_`` are the gateway's own and never shown."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

import orjson

from app.access.middleware import Caller
from app.gateway.conversations import owner_of
from app.state import Record, StateStore

JSON = dict[str, Any]
SPACE = "batches"
ACTIVE_INDEX = "batches_active"  # key: batch id, owner: the runner's instance
RESULTS = "batch_results"
CANCELS = "batch_cancels"  # a cancel asked for, apart from the record the runner rewrites after every line


class BatchStatus(StrEnum):
    """A batch's ``status``, as the OpenAI Batch API names it (a ``str``: stored, compared and shown as its value)."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


ACTIVE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)
DONE = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)
STARTED = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)  # not running its last steps yet: a cancel stops it
_PAGE = 500
_INDEXED = "_indexed"  # the index was built from the batches of an earlier version


def new_batch(batch_id: str, owner: str, input_file_id: str, endpoint: str, window: str, window_s: float,
              metadata: dict[str, str] | None, instance: str, output_expires_after: int | None = None) -> JSON:
    now = int(time.time())
    return {
        "id": batch_id, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": input_file_id,
        "completion_window": window, "status": BatchStatus.VALIDATING, "output_file_id": None, "error_file_id": None,
        "created_at": now, "in_progress_at": None, "expires_at": int(now + window_s), "finalizing_at": None,
        "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata,
        "x_owner": owner, "x_instance": instance, "x_output_expires_after": output_expires_after,
    }


def public(record: JSON) -> JSON:
    """The OpenAI batch object."""
    return {k: v for k, v in record.items() if not k.startswith("x_")}


def result_key(batch_id: str, index: int) -> str:
    return f"{batch_id}:{index:08d}"


def index_of(record: Record) -> int:
    return int(record.key.rpartition(":")[2])


class BatchStore:
    def __init__(self, store: StateStore, results_ttl: float, done_ttl: float) -> None:
        self.store = store
        self.results_ttl = results_ttl  # a crashed batch's leftover results go by themselves
        self.done_ttl = done_ttl  # an ended batch's record

    async def create(self, record: JSON) -> None:
        await self.save(record)
        await self.store.put(ACTIVE_INDEX, record["id"], b"", owner=record["x_instance"])

    async def save(self, record: JSON) -> None:
        ended = record["status"] in DONE
        await self.store.put(SPACE, record["id"], orjson.dumps(record), owner=record["x_owner"],
                             ttl=self.done_ttl if ended else None)
        if ended:
            await self.store.delete(ACTIVE_INDEX, record["id"])

    async def get(self, batch_id: str, caller: Caller | None = None) -> JSON | None:
        """The batch, if ``caller`` may see it (None: the gateway itself)."""
        found = await self.store.get(SPACE, batch_id)
        if found is None or not (caller is None or caller.admin or found.owner == owner_of(caller)):
            return None
        record: JSON = orjson.loads(found.value)
        return record

    async def active_ids(self, instance: str) -> list[str]:
        return [r.key for r in await self._all(ACTIVE_INDEX, instance)]

    async def active(self, instance: str) -> list[JSON]:
        """The batches this runner has to move on, oldest first: read from the index, not from every batch (an
        index entry whose batch ended or went is dropped)."""
        ids = await self.active_ids(instance)
        found = await self.store.get_many(SPACE, ids)
        batches: list[JSON] = []
        for batch_id in ids:
            record = orjson.loads(found[batch_id].value) if batch_id in found else None
            if record is None or record["status"] not in ACTIVE:
                await self.store.delete(ACTIVE_INDEX, batch_id)
            else:
                batches.append(record)
        return batches

    async def index_earlier_batches(self, instance: str) -> None:
        """Once per state directory: the active batches of an earlier version (which had no index) indexed."""
        if await self.store.get(ACTIVE_INDEX, _INDEXED) is not None:
            return
        cursor: str | None = None
        while True:
            page = await self.store.scan(SPACE, after=cursor, limit=_PAGE)
            for found in page:
                record = orjson.loads(found.value)
                if record["status"] in ACTIVE and record.get("x_instance") == instance:
                    await self.store.put(ACTIVE_INDEX, record["id"], b"", owner=instance)
            if len(page) < _PAGE:
                break
            cursor = page[-1].key
        await self.store.put(ACTIVE_INDEX, _INDEXED, b"", owner="")

    async def page(self, caller: Caller, after: str | None, limit: int) -> tuple[list[JSON], bool]:
        """Newest first, as OpenAI lists batches; ``after``: the last id of the previous page."""
        found = await self.store.scan(SPACE, owner=None if caller.admin else owner_of(caller), after=after,
                                      limit=limit + 1, newest_first=True)
        records = [orjson.loads(r.value) for r in found]
        shown = [self.shown(r, await self.cancel_asked(r["id"]) if r["status"] in ACTIVE else None)
                 for r in records[:limit]]
        return shown, len(records) > limit

    async def ask_cancel(self, batch_id: str, owner: str) -> float:
        """Ask for a batch to be cancelled; the time it was asked (the first time, if asked again)."""
        asked = await self.cancel_asked(batch_id)
        if asked is None:
            asked = time.time()
            await self.store.put(CANCELS, batch_id, orjson.dumps(asked), owner=owner, ttl=self.results_ttl)
        return asked

    async def cancel_asked(self, batch_id: str) -> float | None:
        found = await self.store.get(CANCELS, batch_id)
        return float(orjson.loads(found.value)) if found is not None else None

    def shown(self, record: JSON, asked: float | None) -> JSON:
        """The batch as a client sees it: ``cancelling`` from the moment a cancel was asked."""
        if asked is not None and record["status"] in STARTED:
            record = {**record, "status": BatchStatus.CANCELLING, "cancelling_at": int(asked)}
        return public(record)

    # --- results --------------------------------------------------------------------------------------------------

    async def keep_result(self, batch_id: str, index: int, result: JSON) -> None:
        await self.store.put(RESULTS, result_key(batch_id, index), orjson.dumps(result), owner=batch_id,
                             ttl=self.results_ttl)

    async def results(self, batch_id: str) -> AsyncIterator[Record]:
        """The batch's results, a page at a time (in the order they were kept)."""
        cursor: str | None = None
        while True:
            page = await self.store.scan(RESULTS, owner=batch_id, after=cursor, limit=_PAGE)
            for record in page:
                yield record
            if len(page) < _PAGE:
                return
            cursor = page[-1].key

    async def results_of(self, batch_id: str, indices: list[int]) -> dict[int, JSON]:
        found = await self.store.get_many(RESULTS, [result_key(batch_id, i) for i in indices])
        return {index_of(r): orjson.loads(r.value) for r in found.values()}

    async def drop_results(self, batch_id: str) -> None:
        keys = [r.key async for r in self.results(batch_id)]
        for key in keys:
            await self.store.delete(RESULTS, key)

    async def _all(self, space: str, owner: str) -> list[Record]:
        out: list[Record] = []
        cursor: str | None = None
        while True:
            page = await self.store.scan(space, owner=owner, after=cursor, limit=_PAGE)
            out += page
            if len(page) < _PAGE:
                return out
            cursor = page[-1].key
