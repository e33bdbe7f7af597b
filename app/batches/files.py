"""Files (``/v1/files``): a batch's input, and the output and error files the gateway writes for it.

Bytes live in ``GATEWAY_STATE_DIR/files/<id>``, written as they arrive into a temporary file (named for its
writer's process, so a sweep can tell a live upload from one a SIGKILL left behind), then fsync and rename —
never whole in memory, and never in place. Their SHA-256 is kept in the file's record and checked on every read,
so a torn or altered file is an error, never a silent wrong batch. The record (the OpenAI file object and the
checksum) is in the state store, owned by the key that uploaded it: another key's id is a 404, like an unknown
one; the admin key reads all.

Each file expires (``expires_at``): at its ``expires_after`` if the upload named one, else after
``GATEWAY_FILES_TTL``; the record goes by itself and :meth:`Files.sweep` removes bytes without a record. A disk
with no room is a 507 up front (:class:`~app.state.disk.DiskSpace`), or one when the write runs out of it, with
nothing left behind either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import psutil

from app.access.middleware import Caller
from app.core.errors import file_too_large, insufficient_storage
from app.gateway.conversations import owner_of
from app.state import StateStore, StoreFull
from app.state.disk import DiskSpace, out_of_space

SPACE = "files"
JSON = dict[str, Any]
CHUNK = 1 << 20
_TEMP = ".tmp-"  # .tmp-<pid>-<process start>-<random>
_ORPHAN_AFTER = 600.0  # seconds a file without a record is left alone (it may be a moment from getting one)
_PAGE = 500


class FileCorrupted(Exception):
    """A file's bytes no longer match the checksum taken when it was written."""


def new_id() -> str:
    return "file-" + secrets.token_hex(12)


@dataclass(slots=True)
class Written:
    """Bytes on disk under a temporary name, not yet a file: kept (:meth:`Files.keep`) or discarded."""

    path: Path
    size: int
    sha256: str


class Files:
    def __init__(self, store: StateStore, state_dir: Path, *, max_bytes: int, ttl: float, disk: DiskSpace) -> None:
        self.store = store
        self.dir = state_dir / "files"
        self.max_bytes = max_bytes  # uploads (a batch's own output files are not uploads)
        self.ttl = ttl
        self.disk = disk
        self._started = int(psutil.Process().create_time())

    def path(self, file_id: str) -> Path:
        return self.dir / file_id

    # --- writing ----------------------------------------------------------------------------------------------

    async def write(self, chunks: AsyncIterator[bytes], limit: int | None) -> Written:
        """Write ``chunks`` to a temporary file as they come; over ``limit`` bytes is a 413 as soon as it is,
        no room a 507 — and either leaves nothing behind."""
        writer = self.writer(limit)
        try:
            async for chunk in chunks:
                await writer.add(chunk)
        except BaseException:
            writer.discard()
            raise
        return await writer.close()

    def writer(self, limit: int | None = None) -> Writer:
        """A file written piece by piece (a batch's output and error files, side by side)."""
        if self.disk.full:
            raise insufficient_storage("the file")
        self.dir.mkdir(parents=True, exist_ok=True)
        return Writer(self.dir / f"{_TEMP}{os.getpid()}-{self._started}-{secrets.token_hex(6)}", limit, self.disk)

    def discard(self, written: Written) -> None:
        written.path.unlink(missing_ok=True)

    async def keep(self, written: Written, owner: str, filename: str, purpose: str, *,
                   file_id: str | None = None, expires_at: int | None = None) -> JSON:
        """The written bytes as a file (``file_id``: a batch's output, written again after a restart), with its
        record; the record cannot be kept → the bytes go too."""
        file_id = file_id or new_id()
        now = int(time.time())
        expires_at = expires_at or int(now + self.ttl)
        record = {"id": file_id, "object": "file", "bytes": written.size, "created_at": now, "filename": filename,
                  "purpose": purpose, "status": "processed", "expires_at": expires_at, "status_details": None}
        final = self.path(file_id)
        try:
            os.replace(written.path, final)
            await self.store.put(SPACE, file_id, orjson.dumps({**record, "sha256": written.sha256}), owner=owner,
                                 ttl=max(1.0, expires_at - time.time()))
        except BaseException as exc:
            final.unlink(missing_ok=True)
            written.path.unlink(missing_ok=True)
            if isinstance(exc, StoreFull) or out_of_space(exc):
                self.disk.ran_out()
                raise insufficient_storage("the file") from None
            raise
        return record

    async def create(self, owner: str, filename: str, purpose: str, chunks: AsyncIterator[bytes], *,
                     file_id: str | None = None, limit: int | None = None) -> JSON:
        """:meth:`write` then :meth:`keep`."""
        written = await self.write(chunks, limit)
        return await self.keep(written, owner, filename, purpose, file_id=file_id)

    # --- reading ----------------------------------------------------------------------------------------------

    async def get(self, file_id: str, caller: Caller | None) -> JSON | None:
        """The file's record with its checksum (``sha256``), if ``caller`` may see it (None: the gateway itself)."""
        found = await self.store.get(SPACE, file_id)
        if found is None or not (caller is None or caller.admin or found.owner == owner_of(caller)):
            return None
        record: JSON = orjson.loads(found.value)
        return record

    async def list(self, caller: Caller, purpose: str | None, after: str | None, limit: int,
                   order: str) -> tuple[list[JSON], bool]:
        """A page of the caller's files (``order`` by creation), and whether more follow."""
        owner = None if caller.admin else owner_of(caller)
        shown: list[JSON] = []
        cursor = after
        while len(shown) <= limit:
            page = await self.store.scan(SPACE, owner=owner, after=cursor, limit=_PAGE, newest_first=order == "desc")
            shown += [r for r in (orjson.loads(p.value) for p in page) if not purpose or r["purpose"] == purpose]
            if len(page) < _PAGE:
                break
            cursor = page[-1].key
        return [public(r) for r in shown[:limit]], len(shown) > limit

    async def verify(self, record: JSON) -> None:
        """The file's bytes match its checksum (read once, in pieces), else :class:`FileCorrupted`."""
        digest = hashlib.sha256()
        async for chunk in self._pieces(record):
            digest.update(chunk)
        if digest.hexdigest() != record.get("sha256"):
            raise FileCorrupted(f"file {record['id']} does not match its checksum")

    async def content(self, record: JSON) -> AsyncIterator[bytes]:
        """The file's bytes in pieces, checked as they go: the last piece is held back until the whole matches
        its checksum (changed since :meth:`verify`: an error instead of it, so a client never has all the bytes
        of a wrong file)."""
        digest = hashlib.sha256()
        held: bytes | None = None
        async for chunk in self._pieces(record):
            digest.update(chunk)
            if held is not None:
                yield held
            held = chunk
        if digest.hexdigest() != record.get("sha256"):
            raise FileCorrupted(f"file {record['id']} does not match its checksum")
        if held is not None:
            yield held

    async def lines(self, record: JSON, longest: int) -> AsyncIterator[bytes]:
        """The file's lines (without their newline), read in pieces and checked against the checksum at the end;
        a line longer than ``longest`` comes cut to ``longest + 1`` bytes (so memory holds one line at most)."""
        rest = bytearray()
        overlong = False
        async for chunk in self.content(record):
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                if not overlong:
                    rest += chunk[start:end]
                yield bytes(rest[:longest + 1])
                rest.clear()
                overlong = False
                start = end + 1
            if not overlong:
                rest += chunk[start:]
                if len(rest) > longest:
                    del rest[longest + 1:]
                    overlong = True
        if rest:
            yield bytes(rest)

    async def read(self, record: JSON) -> bytes:
        """A small file's bytes, checked (tests, the CLI's tools; the gateway itself streams)."""
        return b"".join([chunk async for chunk in self.content(record)])

    async def _pieces(self, record: JSON) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self.path(record["id"]), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    # --- going ------------------------------------------------------------------------------------------------

    async def delete(self, file_id: str, caller: Caller) -> bool:
        if await self.get(file_id, caller) is None:
            return False
        self.path(file_id).unlink(missing_ok=True)
        return await self.store.delete(SPACE, file_id)

    async def sweep(self) -> int:
        """Remove what no record needs: temporary files whose writer is gone (a SIGKILL mid-upload) and files
        whose record expired or was never kept. Returns how many went."""
        if not self.dir.is_dir():
            return 0
        names = await asyncio.to_thread(lambda: [p.name for p in self.dir.iterdir()])
        gone = 0
        for name in names:
            if name.startswith(_TEMP) and not _writer_alive(name):
                self.path(name).unlink(missing_ok=True)
                gone += 1
        candidates = [n for n in names if not n.startswith(".") and _older_than(self.path(n), _ORPHAN_AFTER)]
        for start in range(0, len(candidates), _PAGE):
            part = candidates[start:start + _PAGE]
            kept = await self.store.get_many(SPACE, part)
            for name in part:
                if name not in kept:
                    self.path(name).unlink(missing_ok=True)
                    gone += 1
        return gone


class Writer:
    """One file being written: pieces off the event loop, a 413 past its limit, a 507 when the disk runs out —
    and, failing, nothing left behind."""

    def __init__(self, path: Path, limit: int | None, disk: DiskSpace) -> None:
        self.path = path
        self.limit = limit
        self.disk = disk
        self.size = 0
        self._digest = hashlib.sha256()
        self._out: IO[bytes] = open(path, "xb")  # noqa: SIM115 - closed by close() or discard()

    async def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            self.discard()
            raise file_too_large(self.limit)
        if self.disk.full:  # stop before the reserve the rest of the state needs is eaten
            self.discard()
            raise insufficient_storage("the file")
        self._digest.update(chunk)
        await self._guard(asyncio.to_thread(self._out.write, chunk))
        self.disk.spent(len(chunk))

    async def close(self) -> Written:
        await self._guard(asyncio.to_thread(_sync, self._out))
        self._out.close()
        return Written(self.path, self.size, self._digest.hexdigest())

    def discard(self) -> None:
        self._out.close()
        self.path.unlink(missing_ok=True)

    async def _guard(self, work: Awaitable[Any]) -> None:
        try:
            await work
        except OSError as exc:
            self.discard()
            if out_of_space(exc):
                self.disk.ran_out()
                raise insufficient_storage("the file") from None
            raise


def public(record: JSON) -> JSON:
    """The OpenAI file object (without the checksum)."""
    return {k: v for k, v in record.items() if k != "sha256"}


def _writer_alive(name: str) -> bool:
    """Whether the process that named this temporary file is still the one running under its id."""
    try:
        pid, started = (int(part) for part in name.removeprefix(_TEMP).split("-")[:2])
        return abs(int(psutil.Process(pid).create_time()) - started) <= 1
    except (ValueError, psutil.Error):
        return False


def _older_than(path: Path, seconds: float) -> bool:
    with contextlib.suppress(OSError):
        return time.time() - path.stat().st_mtime > seconds
    return False


def _sync(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())
