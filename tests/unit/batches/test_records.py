"""Batch records: the runner reads the active batches from their index, not every batch ever made (finding 9 of
issue 31: 6 s behind 1,000 finished batches before), and the list is newest first."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from app.access.middleware import ADMIN
from app.batches.records import BatchStore, new_batch
from app.state.base import Record
from app.state.sqlite import SqliteStore


class Counting(SqliteStore):
    """The SQLite store, counting the records its reads return."""

    read = 0

    async def scan(self, space: str, **kwargs: Any) -> list[Record]:
        found = await super().scan(space, **kwargs)
        self.read += len(found)
        return found

    async def get_many(self, space: str, keys: list[str]) -> dict[str, Record]:
        found = await super().get_many(space, keys)
        self.read += len(found)
        return found


def test_the_runner_reads_only_the_active_batches(tmp_path: Path) -> None:
    store = Counting(tmp_path / "state.sqlite3")
    batches = BatchStore(store, results_ttl=3600, done_ttl=3600)

    async def run() -> None:
        for i in range(1000):
            batch = new_batch(f"batch_done{i:04d}", "team", "file-x", "/v1/chat/completions", "24h", 86400, None,
                              "here")
            await batches.create(batch)
            batch["status"] = "completed"
            await batches.save(batch)
        running = new_batch("batch_running", "team", "file-x", "/v1/chat/completions", "24h", 86400, None, "here")
        await batches.create(running)
        elsewhere = new_batch("batch_other", "team", "file-x", "/v1/chat/completions", "24h", 86400, None, "there")
        await batches.create(elsewhere)
        store.read = 0
        assert [b["id"] for b in await batches.active("here")] == ["batch_running"]
        assert store.read <= 3  # the index entry and the record, not 1,000 finished batches
        page, more = await batches.page(ADMIN, None, 3)
        assert [b["id"] for b in page] == ["batch_other", "batch_running", "batch_done0999"] and more
        await store.aclose()

    asyncio.run(run())


def test_statuses_are_the_batch_apis_strings_stored_as_such() -> None:
    import orjson

    from app.batches.records import ACTIVE, DONE, BatchStatus

    assert [s.value for s in BatchStatus] == ["validating", "in_progress", "finalizing", "completed", "failed",
                                              "expired", "cancelling", "cancelled"]
    assert set(ACTIVE) | set(DONE) == set(BatchStatus) and not set(ACTIVE) & set(DONE)
    record = new_batch("batch_x", "team", "file-x", "/v1/chat/completions", "24h", 3600, None, "here")
    stored = orjson.loads(orjson.dumps(record))
    assert stored["status"] == "validating" and type(stored["status"]) is str and stored["status"] in ACTIVE
