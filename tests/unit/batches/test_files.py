"""Uploaded files: written whole or not at all, checked against their checksum on every read, over the limit
leaves nothing behind, and each key sees only its own; read back a piece or a line at a time; what no record needs
is swept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.access.keys import ApiKey
from app.access.middleware import ADMIN, Caller
from app.batches.files import FileCorrupted, Files
from app.core.errors import GatewayError
from app.state.disk import DiskSpace
from app.state.sqlite import SqliteStore


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _files(tmp_path: Path, max_bytes: int = 1 << 30, min_free: int = 0) -> Files:
    return Files(SqliteStore(tmp_path / "state.sqlite3"), tmp_path, max_bytes=max_bytes, ttl=3600,
                 disk=DiskSpace(tmp_path, min_free))


def test_a_file_is_written_whole_and_read_back_checked(tmp_path: Path) -> None:
    files = _files(tmp_path)
    team = Caller(key=ApiKey(name="team-a", sha256="0"))

    async def run() -> None:
        record = await files.create("team-a", "in.jsonl", "batch", _chunks(b"one\n", b"two\n"))
        assert record["bytes"] == 8 and record["object"] == "file" and "sha256" not in record
        found = await files.get(record["id"], team)
        assert found is not None and await files.read(found) == b"one\ntwo\n"
        assert await files.get(record["id"], Caller(key=ApiKey(name="team-b", sha256="0"))) is None
        assert await files.get(record["id"], ADMIN) is not None
        files.path(record["id"]).write_bytes(b"one\ntwo!\n")  # changed behind the gateway's back
        with pytest.raises(FileCorrupted):
            await files.read(found)
        assert [p.name for p in tmp_path.joinpath("files").iterdir()] == [record["id"]]  # no temporary left
        await files.store.aclose()

    asyncio.run(run())


def test_over_the_limit_is_a_413_and_leaves_nothing(tmp_path: Path) -> None:
    files = _files(tmp_path, max_bytes=1024)

    async def run() -> None:
        with pytest.raises(GatewayError) as refused:
            await files.create("", "big.jsonl", "batch", _chunks(b"x" * 1000, b"x" * 100), limit=files.max_bytes)
        assert refused.value.status == 413
        assert list(tmp_path.joinpath("files").iterdir()) == []
        await files.store.aclose()

    asyncio.run(run())


def test_lines_come_one_at_a_time_and_an_overlong_one_is_cut(tmp_path: Path) -> None:
    files = _files(tmp_path)

    async def run() -> None:
        record = await files.create("", "in.jsonl", "batch", _chunks(b"one\ntw", b"o\n" + b"x" * 5000, b"\nend"))
        found = await files.get(record["id"], None)
        assert found is not None
        assert [line async for line in files.lines(found, 100)] == [b"one", b"two", b"x" * 101, b"end"]
        assert b"".join([c async for c in files.content(found)]) == b"one\ntwo\n" + b"x" * 5000 + b"\nend"
        await files.verify(found)
        await files.store.aclose()

    asyncio.run(run())


def test_no_room_is_a_507_before_a_byte_is_written(tmp_path: Path) -> None:
    files = _files(tmp_path, min_free=1 << 62)  # more than any disk has

    async def run() -> None:
        with pytest.raises(GatewayError) as refused:
            await files.create("", "in.jsonl", "batch", _chunks(b"x"))
        assert refused.value.status == 507 and refused.value.code == "insufficient_storage"
        assert not tmp_path.joinpath("files").exists() or list(tmp_path.joinpath("files").iterdir()) == []
        await files.store.aclose()

    asyncio.run(run())


def test_the_sweep_removes_what_no_record_needs_and_spares_live_writes(tmp_path: Path) -> None:
    """Finding 13: a temporary file of a writer that died (a SIGKILL mid-upload) goes; one being written stays;
    a file whose record is gone goes once it is old enough."""
    import os

    files = _files(tmp_path)

    async def run() -> None:
        kept = await files.create("", "in.jsonl", "batch", _chunks(b"kept"))
        folder = tmp_path / "files"
        dead = folder / ".tmp-999999999-1-abc"  # no such process
        dead.write_bytes(b"half an upload")
        writer = files.writer()
        await writer.add(b"being written")  # this process's: alive
        orphan = folder / "file-orphan"
        orphan.write_bytes(b"no record")
        os.utime(orphan, (1, 1))
        young = folder / "file-young"
        young.write_bytes(b"a record is a moment away")
        assert await files.sweep() == 2
        assert sorted(p.name for p in folder.iterdir()) == sorted([kept["id"], writer.path.name, "file-young"])
        writer.discard()
        await files.store.aclose()

    asyncio.run(run())


def test_a_file_changed_after_its_check_never_arrives_whole(tmp_path: Path) -> None:
    """Review of issue 31: the last piece is held back until the whole file matched its checksum."""
    from app.batches import files as files_module

    files = _files(tmp_path)

    async def run() -> None:
        record = await files.create("", "in.jsonl", "batch", _chunks(b"a" * 3000))
        found = await files.get(record["id"], None)
        assert found is not None
        await files.verify(found)
        files.path(record["id"]).write_bytes(b"b" * 3000)  # same size, other bytes
        got = b""
        with pytest.raises(FileCorrupted):
            async for chunk in files.content(found):
                got += chunk
        assert len(got) < 3000
        await files.store.aclose()

    original = files_module.CHUNK
    files_module.CHUNK = 1000
    try:
        asyncio.run(run())
    finally:
        files_module.CHUNK = original
