"""A batch's input file read a line at a time (never whole), and its results' success test: what the runner and
the finishing step share. A file that went away or no longer matches its checksum is :class:`InputGone`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.batches.files import FileCorrupted, Files

JSON = dict[str, Any]


class InputGone(Exception):
    """The batch's input file was deleted, or no longer matches its checksum."""

    def __init__(self, message: str, code: str = "file_not_found") -> None:
        super().__init__(message)
        self.code = code


async def input_lines(files: Files, batch: JSON, longest: int) -> AsyncIterator[bytes]:
    """The input file's lines (InputGone when it went or was altered); a line over ``longest`` bytes comes cut."""
    record = await files.get(batch["input_file_id"], None)
    if record is None:
        raise InputGone(f"The input file {batch['input_file_id']} no longer exists.")
    return _checked(files.lines(record, longest))


def succeeded(result: JSON) -> bool:
    response = result.get("response")
    return result.get("error") is None and isinstance(response, dict) and 200 <= response["status_code"] < 300


async def _checked(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            yield line
    except FileNotFoundError as exc:
        raise InputGone("The input file no longer exists.") from exc
    except (OSError, FileCorrupted) as exc:
        raise InputGone(f"The input file cannot be read: {exc}.", "file_unreadable") from exc
