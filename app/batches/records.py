"""Batches as records in the state store (space ``batches``, owned by the key that created them) and each finished
line's result (space ``batch_results``, one record a line, keyed by its position): what a restarted gateway resumes
from. A line's result is written under the same key however often the line runs, so the output holds each
``custom_id`` once. Fields starting with ``x_`` are the gateway's own and never shown."""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.access.middleware import Caller
from app.gateway.conversations import owner_of
from app.state import StateStore

JSON = dict[str, Any]
SPACE = "batches"
RESULTS = "batch_results"
CANCELS = "batch_cancels"  # a cancel asked for, apart from the record the runner rewrites after every line
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
DONE = ("completed", "failed", "expired", "cancelled")
_PAGE = 500


def new_batch(batch_id: str, owner: str, input_file_id: str, endpoint: str, window: str, window_s: float,
              metadata: dict[str, str] | None, instance: str) -> JSON:
    now = int(time.time())
    return {
        "id": batch_id, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": input_file_id,
        "completion_window": window, "status": "validating", "output_file_id": None, "error_file_id": None,
        "created_at": now, "in_progress_at": None, "expires_at": int(now + window_s), "finalizing_at": None,
        "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata,
        "x_owner": owner, "x_instance": instance,
    }


def public(record: JSON) -> JSON:
    """The OpenAI batch object."""
    return {k: v for k, v in record.items() if not k.startswith("x_")}


def result_key(batch_id: str, index: int) -> str:
    return f"{batch_id}:{index:08d}"


class BatchStore:
    def __init__(self, store: StateStore, results_ttl: float) -> None:
        self.store = store
        self.results_ttl = results_ttl  # a crashed batch's leftover results go by themselves

    async def save(self, record: JSON) -> None:
        await self.store.put(SPACE, record["id"], orjson.dumps(record), owner=record["x_owner"])

    async def get(self, batch_id: str, caller: Caller | None = None) -> JSON | None:
        """The batch, if ``caller`` may see it (None: the gateway itself)."""
        found = await self.store.get(SPACE, batch_id)
        if found is None or not (caller is None or caller.admin or found.owner == owner_of(caller)):
            return None
        record: JSON = orjson.loads(found.value)
        return record

    async def every(self, owner: str | None = None) -> list[JSON]:
        """All batches (of one owner), oldest first."""
        records: list[JSON] = []
        cursor: str | None = None
        while True:
            page = await self.store.scan(SPACE, owner=owner, after=cursor, limit=_PAGE)
            records += [orjson.loads(r.value) for r in page]
            if len(page) < _PAGE:
                return records
            cursor = page[-1].key

    async def page(self, caller: Caller, after: str | None, limit: int) -> tuple[list[JSON], bool]:
        """Newest first, as OpenAI lists batches; ``after``: the last id of the previous page."""
        records = list(reversed(await self.every(None if caller.admin else owner_of(caller))))
        if after is not None:
            ids = [r["id"] for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
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
        if asked is not None and record["status"] in ("validating", "in_progress"):
            record = {**record, "status": "cancelling", "cancelling_at": int(asked)}
        return public(record)

    async def keep_result(self, batch_id: str, index: int, result: JSON) -> None:
        await self.store.put(RESULTS, result_key(batch_id, index), orjson.dumps(result), owner=batch_id,
                             ttl=self.results_ttl)

    async def results(self, batch_id: str) -> dict[int, JSON]:
        found: dict[int, JSON] = {}
        cursor: str | None = None
        while True:
            page = await self.store.scan(RESULTS, owner=batch_id, after=cursor, limit=_PAGE)
            for record in page:
                found[int(record.key.rpartition(":")[2])] = orjson.loads(record.value)
            if len(page) < _PAGE:
                return found
            cursor = page[-1].key

    async def drop_results(self, batch_id: str, indices: list[int]) -> None:
        for index in indices:
            await self.store.delete(RESULTS, result_key(batch_id, index))
