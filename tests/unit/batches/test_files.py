"""Uploaded files: written whole or not at all, checked against their checksum on every read, over the limit
leaves nothing behind, and each key sees only its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.access.keys import ApiKey
from app.access.middleware import ADMIN, Caller
from app.batches.files import FileCorrupted, Files
from app.core.errors import GatewayError
from app.core.settings import Settings
from app.state.sqlite import SqliteStore


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _files(tmp_path: Path, **settings: object) -> Files:
    config = Settings(_env_file=None, state_dir=tmp_path, **settings)  # type: ignore[call-arg]
    return Files(SqliteStore(tmp_path / "state.sqlite3"), config)


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
    files = _files(tmp_path, max_file_bytes=1024)

    async def run() -> None:
        with pytest.raises(GatewayError) as refused:
            await files.create("", "big.jsonl", "batch", _chunks(b"x" * 1000, b"x" * 100))
        assert refused.value.status == 413
        assert list(tmp_path.joinpath("files").iterdir()) == []
        await files.store.aclose()

    asyncio.run(run())
