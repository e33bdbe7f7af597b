"""Uploaded files (``/v1/files``): what a batch reads and writes.

A file's bytes live in ``GATEWAY_STATE_DIR/files/<id>``, written atomically (a temporary file, fsync, rename) with
their SHA-256 kept beside the metadata and checked on every read, so a torn or altered file is an error, never a
silent wrong batch. The metadata (the OpenAI file object and the checksum) is a record in the state store, owned
by the key that uploaded the file: another key's id is a 404, like an unknown one; the admin key reads all.
Files have no expiry: they go when deleted (their batch's output files too).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from app.access.middleware import Caller
from app.core.errors import GatewayError
from app.core.settings import Settings
from app.gateway.conversations import owner_of
from app.state import StateStore

SPACE = "files"
JSON = dict[str, Any]
CHUNK = 1 << 20


class FileCorrupted(Exception):
    """A file's bytes no longer match the checksum taken when it was written."""


def new_id() -> str:
    return "file-" + secrets.token_hex(12)


class Files:
    def __init__(self, store: StateStore, settings: Settings) -> None:
        self.store = store
        self.dir = settings.state_dir / "files"
        self.max_bytes = settings.max_file_bytes

    def path(self, file_id: str) -> Path:
        return self.dir / file_id

    async def create(self, owner: str, filename: str, purpose: str, chunks: AsyncIterator[bytes],
                     file_id: str | None = None) -> JSON:
        """Write ``chunks`` atomically under a new id (or ``file_id``: a batch's output, written again after a
        restart) and keep its record; over ``GATEWAY_MAX_FILE_BYTES`` is a 413 and leaves nothing behind."""
        file_id = file_id or new_id()
        self.dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{file_id}.", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise GatewayError(413, f"The file is larger than {self.max_bytes} bytes "
                                           "(GATEWAY_MAX_FILE_BYTES).", code="file_too_large", param="file")
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)  # disk writes off the event loop
                await asyncio.to_thread(_sync, out)
            os.replace(tmp, self.path(file_id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        record = {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
                  "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
                  "status_details": None}
        await self.store.put(SPACE, file_id, orjson.dumps({**record, "sha256": digest.hexdigest()}), owner=owner)
        return record

    async def get(self, file_id: str, caller: Caller | None) -> JSON | None:
        """The file's record with its checksum (``sha256``), if ``caller`` may see it (None: the gateway itself)."""
        found = await self.store.get(SPACE, file_id)
        if found is None or not (caller is None or caller.admin or found.owner == owner_of(caller)):
            return None
        record: JSON = orjson.loads(found.value)
        return record

    async def list(self, caller: Caller, purpose: str | None, after: str | None, limit: int,
                   order: str) -> tuple[list[JSON], bool]:
        records: list[JSON] = []
        cursor: str | None = None
        owner = None if caller.admin else owner_of(caller)
        while True:
            page = await self.store.scan(SPACE, owner=owner, after=cursor, limit=500)
            records += [orjson.loads(r.value) for r in page]
            if len(page) < 500:
                break
            cursor = page[-1].key
        if purpose:
            records = [r for r in records if r["purpose"] == purpose]
        if order == "desc":
            records.reverse()
        if after is not None:
            ids = [r["id"] for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
        return [public(r) for r in records[:limit]], len(records) > limit

    async def read(self, record: JSON) -> bytes:
        """A file's bytes, checked against its checksum."""
        data = await _read(self.path(record["id"]))
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise FileCorrupted(f"file {record['id']} does not match its checksum")
        return data

    async def delete(self, file_id: str, caller: Caller) -> bool:
        if await self.get(file_id, caller) is None:
            return False
        self.path(file_id).unlink(missing_ok=True)
        return await self.store.delete(SPACE, file_id)


def public(record: JSON) -> JSON:
    """The OpenAI file object (without the checksum)."""
    return {k: v for k, v in record.items() if k != "sha256"}


async def _read(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


def _sync(out: Any) -> None:
    out.flush()
    os.fsync(out.fileno())
