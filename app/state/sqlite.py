"""The state store in one SQLite file (``GATEWAY_STATE_DIR/gateway.sqlite3``): nothing to install, and shared by
every worker process of one host.

One thread owns the connection and runs every statement, in order, so the event loop never waits on the disk
and there is one writer per process; across processes (workers) SQLite's own locking serialises writers (WAL
mode, ``BEGIN IMMEDIATE`` for read-modify-write, a busy timeout). A quota admission is one transaction: checked
and counted together, so two workers never both take the last request of a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psutil

from app.state.base import REASONS, Decision, Limits, Record, StoreDown, Usage, pack, unpack, verdict, windows

T = TypeVar("T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (space TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL, created REAL NOT NULL,
    expires REAL, size INTEGER NOT NULL, value BLOB NOT NULL, PRIMARY KEY (space, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_age ON records (space, created);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slots (name TEXT NOT NULL, slot TEXT NOT NULL, tokens INTEGER NOT NULL,
    started REAL NOT NULL, pid INTEGER NOT NULL, pid_started REAL NOT NULL, PRIMARY KEY (name, slot)) WITHOUT ROWID;
"""
_PURGE_EVERY = 500  # writes between purges of expired records and counters


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-sqlite")
        self._db: sqlite3.Connection | None = None
        self._writes = 0
        self._pid = os.getpid()
        self._pid_started = psutil.Process().create_time()

    # --- the one thread -----------------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._in_thread, work)
        except sqlite3.Error as exc:
            raise StoreDown(f"{self.path}: {exc}") from exc

    def _in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self._db = self._open()
        return work(self._db)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                # switching a new file to WAL takes it whole, and SQLite answers "locked" at once, without waiting
                # out the busy timeout, to the second of two workers opening it together: that one tries again
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
                db.executescript(_SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # a back-off in the store's own thread
        self._forget_dead_processes(db)
        return db

    def _forget_dead_processes(self, db: sqlite3.Connection) -> None:
        """Slots held by processes that are gone (a worker or a gateway that crashed) are freed at once."""
        for pid, started in db.execute("SELECT DISTINCT pid, pid_started FROM slots").fetchall():
            try:
                alive = abs(psutil.Process(pid).create_time() - started) < 1.0
            except psutil.Error:
                alive = False
            if not alive:
                db.execute("DELETE FROM slots WHERE pid = ? AND pid_started = ?", (pid, started))

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Any:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            db.execute("DELETE FROM records WHERE expires IS NOT NULL AND expires < ?", (now,))
            db.execute("DELETE FROM counters WHERE expires < ?", (now,))

    # --- records ----------------------------------------------------------------------------------------------

    async def put(self, space: str, key: str, value: bytes, *, owner: str = "", ttl: float | None = None) -> None:
        now = self.clock()
        stored = pack(value)

        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (space, key, owner, now, now + ttl if ttl else None, len(stored), stored))
            self._maybe_purge(db, now)

        await self._run(work)

    async def get(self, space: str, key: str) -> Record | None:
        now = self.clock()

        def work(db: sqlite3.Connection) -> Any:
            return db.execute("SELECT key, owner, value, created, expires FROM records WHERE space = ? AND key = ? "
                              "AND (expires IS NULL OR expires >= ?)", (space, key, now)).fetchone()

        row = await self._run(work)
        return Record(row[0], row[1], unpack(row[2]), row[3], row[4]) if row else None

    async def delete(self, space: str, key: str) -> bool:
        def work(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM records WHERE space = ? AND key = ?", (space, key)).rowcount

        return await self._run(work) > 0

    async def scan(self, space: str, *, owner: str | None = None, after: str | None = None,
                   limit: int = 100) -> list[Record]:
        now = self.clock()

        def work(db: sqlite3.Connection) -> list[Any]:
            start = (-1.0, "")
            if after is not None:
                found = db.execute("SELECT created, key FROM records WHERE space = ? AND key = ?",
                                   (space, after)).fetchone()
                start = found if found else (float("inf"), "")
            sql = ("SELECT key, owner, value, created, expires FROM records WHERE space = ? "
                   "AND (expires IS NULL OR expires >= ?) AND (created > ? OR (created = ? AND key > ?))")
            args: list[Any] = [space, now, start[0], start[0], start[1]]
            if owner is not None:
                sql += " AND owner = ?"
                args.append(owner)
            return db.execute(sql + " ORDER BY created, key LIMIT ?", (*args, limit)).fetchall()

        return [Record(r[0], r[1], unpack(r[2]), r[3], r[4]) for r in await self._run(work)]

    async def trim(self, space: str, max_bytes: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM records WHERE space = ?", (space,)).fetchone()[0]
            removed = 0
            for key, size in db.execute("SELECT key, size FROM records WHERE space = ? ORDER BY created, key",
                                        (space,)).fetchall():
                if total <= max_bytes:
                    break
                db.execute("DELETE FROM records WHERE space = ? AND key = ?", (space, key))
                total -= size
                removed += 1
            return removed

        return await self._run(work)

    # --- quotas -------------------------------------------------------------------------------------------------

    async def admit(self, name: str, limits: Limits, slot: str, tokens: int, stale_after: float) -> Decision:
        now = self.clock()
        minute, day, minute_resets, day_resets = windows(now)
        tokens = limits.clamp(tokens)
        names = (f"{name}:req:{minute}", f"{name}:tok:{minute}", f"{name}:tokd:{day}")

        def work(db: sqlite3.Connection) -> Decision:
            with self._transaction(db):
                db.execute("DELETE FROM slots WHERE name = ? AND started < ?", (name, now - stale_after))
                requests, tokens_minute, tokens_day = (_counter(db, counter) for counter in names)
                reserved, running = db.execute("SELECT COALESCE(SUM(tokens), 0), COUNT(*) FROM slots WHERE name = ?",
                                               (name,)).fetchone()
                found = verdict(limits, requests, tokens_minute, tokens_day, reserved, running, tokens)
                if not found:
                    requests += 1
                    db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)", (names[0], requests, now + 120))
                    db.execute("INSERT OR REPLACE INTO slots VALUES (?, ?, ?, ?, ?, ?)",
                               (name, slot, tokens, now, self._pid, self._pid_started))
                    reserved, running = reserved + tokens, running + 1
                self._maybe_purge(db, now)
            usage = Usage(requests, tokens_minute, tokens_day, reserved, running, minute_resets, day_resets)
            return Decision(not found, REASONS.get(found), usage)

        return await self._run(work)

    async def settle(self, name: str, slot: str, tokens: int) -> None:
        now = self.clock()
        minute, day, _, _ = windows(now)

        def work(db: sqlite3.Connection) -> None:
            with self._transaction(db):
                db.execute("DELETE FROM slots WHERE name = ? AND slot = ?", (name, slot))
                if tokens:
                    for counter, ttl in ((f"{name}:tok:{minute}", 120), (f"{name}:tokd:{day}", 2 * 86400)):
                        db.execute("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                                   "value = value + excluded.value", (counter, tokens, now + ttl))

        await self._run(work)

    async def aclose(self) -> None:
        def close(db: sqlite3.Connection) -> None:
            db.close()

        if self._db is not None:
            with contextlib.suppress(StoreDown):
                await self._run(close)
            self._db = None
        self._thread.shutdown(wait=False)


def _counter(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0
