"""The state store in one SQLite file (``GATEWAY_STATE_DIR/gateway.sqlite3``): nothing to install, and shared by
every worker process of one host.

One thread owns the connection and runs every statement, in order, so the event loop never waits on the disk
and there is one writer per process; across processes (workers) SQLite's own locking serialises writers (WAL
mode, ``BEGIN IMMEDIATE`` for read-modify-write, a busy timeout). A quota admission is one transaction: checked
and counted together, so two workers never both take the last request of a minute. A full disk is
:class:`~app.state.base.StoreFull` (SQLite rolls the statement back: nothing half-written).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from app.state.base import (
    COUNTERS,
    DIMENSIONS,
    FAR,
    LEASE,
    REASONS,
    Decision,
    Limits,
    Record,
    StoreDown,
    StoreFull,
    Tally,
    Usage,
    pack,
    unpack,
    verdict,
    windows,
)

T = TypeVar("T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (space TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL, created REAL NOT NULL,
    expires REAL, size INTEGER NOT NULL, value BLOB NOT NULL, PRIMARY KEY (space, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_age ON records (space, created);
CREATE INDEX IF NOT EXISTS records_by_owner ON records (space, owner, created);
CREATE INDEX IF NOT EXISTS records_by_expiry ON records (space, owner, expires);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leased_slots (name TEXT NOT NULL, slot TEXT NOT NULL, tokens INTEGER NOT NULL,
    started REAL NOT NULL, holder TEXT NOT NULL, PRIMARY KEY (name, slot)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (holder TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tallies (space TEXT NOT NULL, width INTEGER NOT NULL, start INTEGER NOT NULL,
    DIMS, COUNTS, expires REAL NOT NULL, PRIMARY KEY (space, width, start, KEYS)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tallies_by_key ON tallies (space, width, key, start);
CREATE INDEX IF NOT EXISTS tallies_by_expiry ON tallies (expires);
""".replace("DIMS", ", ".join(f"{d} TEXT NOT NULL" for d in DIMENSIONS)).replace(
    "COUNTS", ", ".join(f"{c} REAL NOT NULL" for c in COUNTERS)).replace("KEYS", ", ".join(DIMENSIONS))
# (the slots of the version before, table ``slots`` by process id, are left to its processes during an upgrade)
_COLUMNS = "key, owner, value, created, expires"
_LIVE = "(expires IS NULL OR expires >= ?)"
_ADD_TALLY = (
    f"INSERT INTO tallies VALUES ({', '.join('?' * (3 + len(DIMENSIONS) + len(COUNTERS) + 1))}) "
    f"ON CONFLICT (space, width, start, {', '.join(DIMENSIONS)}) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTERS) + ", expires = max(expires, excluded.expires)"
)
_TALLY_COLUMNS = ", ".join(("width", "start", *DIMENSIONS, *COUNTERS))
_PURGE_EVERY = 500  # writes between purges of expired records, counters and leases
_IN = 500  # keys per IN (...) list


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.lease = LEASE
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-sqlite")
        self._db: sqlite3.Connection | None = None
        self._writes = 0
        self._tallies_purged = 0.0

    # --- the one thread -----------------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._in_thread, work)
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise StoreFull(f"{self.path}: the disk is full ({exc})") from exc
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
                with self._transaction(db):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # a back-off in the store's own thread
        return db

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
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
            db.execute("DELETE FROM leases WHERE expires < ?", (now - 60,))

    # --- records ----------------------------------------------------------------------------------------------

    async def put(self, space: str, key: str, value: bytes, *, owner: str = "", ttl: float | None = None) -> None:
        now = self.clock()
        stored = pack(value)

        def work(db: sqlite3.Connection) -> None:
            # written again: the creation time stays (a list keeps its order), unless the old record had expired
            db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (space, key) DO UPDATE SET "
                       "owner = excluded.owner, expires = excluded.expires, size = excluded.size, "
                       "value = excluded.value, created = CASE WHEN records.expires IS NOT NULL AND "
                       "records.expires < excluded.created THEN excluded.created ELSE records.created END",
                       (space, key, owner, now, now + ttl if ttl else None, len(stored), stored))
            self._maybe_purge(db, now)

        await self._run(work)

    async def get(self, space: str, key: str) -> Record | None:
        now = self.clock()

        def work(db: sqlite3.Connection) -> Any:
            return db.execute(f"SELECT {_COLUMNS} FROM records WHERE space = ? AND key = ? AND {_LIVE}",
                              (space, key, now)).fetchone()

        row = await self._run(work)
        return _record(row) if row else None

    async def get_many(self, space: str, keys: list[str]) -> dict[str, Record]:
        now = self.clock()

        def work(db: sqlite3.Connection) -> list[Any]:
            rows: list[Any] = []
            for start in range(0, len(keys), _IN):
                part = keys[start:start + _IN]
                rows += db.execute(f"SELECT {_COLUMNS} FROM records WHERE space = ? AND key IN "
                                   f"({','.join('?' * len(part))}) AND {_LIVE}", (space, *part, now)).fetchall()
            return rows

        return {row[0]: _record(row) for row in await self._run(work)} if keys else {}

    async def delete(self, space: str, key: str) -> bool:
        def work(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM records WHERE space = ? AND key = ?", (space, key)).rowcount

        return await self._run(work) > 0

    async def touch(self, space: str, keys: list[str], ttl: float) -> None:
        now = self.clock()

        def work(db: sqlite3.Connection) -> None:
            for start in range(0, len(keys), _IN):
                part = keys[start:start + _IN]
                db.execute(f"UPDATE records SET expires = ? WHERE space = ? AND key IN ({','.join('?' * len(part))}) "
                           f"AND {_LIVE}", (now + ttl, space, *part, now))

        if keys:
            await self._run(work)

    async def scan(self, space: str, *, owner: str | None = None, after: str | None = None, limit: int = 100,
                   newest_first: bool = False) -> list[Record]:
        now = self.clock()
        later, order = ("<", "DESC") if newest_first else (">", "")

        def work(db: sqlite3.Connection) -> list[Any]:
            start: tuple[float, str] = (float("inf"), "\uffff") if newest_first else (-1.0, "")
            if after is not None:
                found = db.execute("SELECT created, key FROM records WHERE space = ? AND key = ?",
                                   (space, after)).fetchone()
                start = found if found else ((-1.0, "") if newest_first else (float("inf"), ""))
            sql = (f"SELECT {_COLUMNS} FROM records WHERE space = ? AND {_LIVE} "
                   f"AND (created {later} ? OR (created = ? AND key {later} ?))")
            args: list[Any] = [space, now, start[0], start[0], start[1]]
            if owner is not None:
                sql += " AND owner = ?"
                args.append(owner)
            return db.execute(f"{sql} ORDER BY created {order}, key {order} LIMIT ?", (*args, limit)).fetchall()

        return [_record(r) for r in await self._run(work)]

    async def size(self, space: str, owner: str | None = None) -> int:
        now = self.clock()

        def work(db: sqlite3.Connection) -> int:
            sql, args = _of(space, owner, now)
            return int(db.execute(f"SELECT COALESCE(SUM(size), 0) FROM records WHERE {sql}", args).fetchone()[0])

        return await self._run(work)

    async def trim(self, space: str, max_bytes: int, *, owner: str | None = None) -> int:
        now = self.clock()

        def work(db: sqlite3.Connection) -> int:
            sql, args = _of(space, owner, now)
            with self._transaction(db):
                total = db.execute(f"SELECT COALESCE(SUM(size), 0) FROM records WHERE {sql}", args).fetchone()[0]
                removed = 0
                if total <= max_bytes:
                    return 0
                rows = db.execute(f"SELECT key, size FROM records WHERE {sql} ORDER BY COALESCE(expires, ? + created),"
                                  " created, key", (*args, FAR))
                for key, size in rows.fetchall():
                    if total <= max_bytes:
                        break
                    db.execute("DELETE FROM records WHERE space = ? AND key = ?", (space, key))
                    total -= size
                    removed += 1
                return removed

        return await self._run(work)

    async def sweep(self, space: str) -> int:
        now = self.clock()

        def work(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM records WHERE space = ? AND expires IS NOT NULL AND expires < ?",
                              (space, now)).rowcount

        return await self._run(work)

    # --- usage tallies ------------------------------------------------------------------------------------------

    async def add_tallies(self, space: str, tallies: list[Tally], keep: dict[int, float]) -> None:
        now = self.clock()
        rows = [(space, t.width, t.start, *t.dims, *t.counts, t.start + t.width + keep[t.width]) for t in tallies]

        def work(db: sqlite3.Connection) -> None:
            with self._transaction(db):  # all of a flush or none of it: a retry never counts twice
                db.executemany(_ADD_TALLY, rows)
            if now - self._tallies_purged > 60:
                self._tallies_purged = now
                db.execute("DELETE FROM tallies WHERE expires < ?", (now,))

        if rows:
            await self._run(work)

    async def tallies(self, space: str, width: int, start: int, end: int, key: str | None = None) -> list[Tally]:
        now = self.clock()
        sql = f"SELECT {_TALLY_COLUMNS} FROM tallies WHERE space = ? AND width = ? AND start >= ? AND start < ? " \
              "AND expires >= ?"
        args: list[Any] = [space, width, start, end, now]
        if key is not None:
            sql += " AND key = ?"
            args.append(key)
        split = 2 + len(DIMENSIONS)

        def work(db: sqlite3.Connection) -> list[Any]:
            return db.execute(sql, args).fetchall()

        return [Tally(row[0], row[1], tuple(row[2:split]), tuple(row[split:])) for row in await self._run(work)]

    # --- quotas -------------------------------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        now = self.clock()

        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)", (self.holder, now + self.lease))

        await self._run(work)

    async def admit(self, name: str, limits: Limits, slot: str, tokens: int, stale_after: float) -> Decision:
        now = self.clock()
        minute, day, minute_resets, day_resets = windows(now)
        tokens = limits.clamp(tokens)
        names = (f"{name}:req:{minute}", f"{name}:tok:{minute}", f"{name}:tokd:{day}")

        def work(db: sqlite3.Connection) -> Decision:
            with self._transaction(db):
                db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)", (self.holder, now + self.lease))
                # slots of holders whose lease lapsed (a process that died) and, last resort, of forgetful ones
                db.execute("DELETE FROM leased_slots WHERE name = ? AND (started < ? OR holder NOT IN "
                           "(SELECT holder FROM leases WHERE expires >= ?))", (name, now - stale_after, now))
                requests, tokens_minute, tokens_day = (_counter(db, counter) for counter in names)
                reserved, running = db.execute(
                    "SELECT COALESCE(SUM(tokens), 0), COUNT(*) FROM leased_slots WHERE name = ?", (name,)).fetchone()
                found = verdict(limits, requests, tokens_minute, tokens_day, reserved, running, tokens)
                if not found:
                    requests += 1
                    db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)", (names[0], requests, now + 120))
                    db.execute("INSERT OR REPLACE INTO leased_slots VALUES (?, ?, ?, ?, ?)",
                               (name, slot, tokens, now, self.holder))
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
                db.execute("DELETE FROM leased_slots WHERE name = ? AND slot = ?", (name, slot))
                if tokens:
                    for counter, ttl in ((f"{name}:tok:{minute}", 120), (f"{name}:tokd:{day}", 2 * 86400)):
                        db.execute("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                                   "value = value + excluded.value", (counter, tokens, now + ttl))

        await self._run(work)

    async def aclose(self) -> None:
        def close(db: sqlite3.Connection) -> None:
            with contextlib.suppress(sqlite3.Error):  # a clean stop: this holder's slots are free at once
                db.execute("DELETE FROM leases WHERE holder = ?", (self.holder,))
            db.close()

        if self._db is not None:
            with contextlib.suppress(StoreDown):
                await self._run(close)
            self._db = None
        self._thread.shutdown(wait=False)


def _record(row: Any) -> Record:
    return Record(row[0], row[1], unpack(row[2]), row[3], row[4])


def _of(space: str, owner: str | None, now: float) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause of a space's (an owner's) live records."""
    if owner is None:
        return f"space = ? AND {_LIVE}", (space, now)
    return f"space = ? AND owner = ? AND {_LIVE}", (space, owner, now)


def _counter(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
