"""Writing into ``models.json`` the way a person would: only the entries that change, in place.

The registry is a file people edit and review in diffs, with their own line breaks, key order and fields the
gateway does not know (``x-owner``, ``_comment``). So a ``measured`` record is written by splicing text: each
entry's span and each of its members' spans are found with the standard JSON decoder, the one value is
inserted or replaced, and every other byte of the file stays as it was. The result must still load as a valid
registry, and the file must not have changed on disk since it was read (someone else's edit is never
clobbered); then it is replaced atomically, so a running gateway's watcher never sees half a file.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_DECODER = json.JSONDecoder()
_SPACE = " \t\r\n"


class RegistryChanged(Exception):
    """The file changed on disk while it was being annotated: nothing was written."""


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _SPACE:
        index += 1
    return index


def _expect(text: str, index: int, char: str) -> int:
    index = _skip(text, index)
    if index >= len(text) or text[index] != char:
        raise ValueError(f"expected '{char}' at offset {index}")
    return index + 1


def entry_spans(text: str) -> list[tuple[int, int, Any]]:
    """(start, end, value) of each registry entry: the top-level array's elements, or those of its ``models``
    array when the file is ``{"models": [...]}``."""
    start = _skip(text, 0)
    if text[start:start + 1] == "{":
        members, _, _ = member_spans(text, start)
        if "models" not in members:
            raise ValueError("the registry object has no 'models' list")
        start = members["models"][0]
    spans: list[tuple[int, int, Any]] = []
    index = _expect(text, start, "[")
    index = _skip(text, index)
    if index < len(text) and text[index] == "]":
        return spans
    while True:
        start = _skip(text, index)
        value, end = _DECODER.raw_decode(text, start)
        spans.append((start, end, value))
        index = _skip(text, end)
        if index < len(text) and text[index] == ",":
            index += 1
            continue
        _expect(text, index, "]")
        return spans


def member_spans(text: str, start: int) -> tuple[dict[str, tuple[int, int]], int, str]:
    """The value spans of an object's members by key, the offset of its closing brace, and the text that
    separates its last two members (``", "`` or ``",\n    "``: how this file lays members out)."""
    members: dict[str, tuple[int, int]] = {}
    separator = ", "
    index = _expect(text, start, "{")
    index = _skip(text, index)
    if text[index] == "}":
        return members, index, separator
    previous_end = -1
    while True:
        key_start = _skip(text, index)
        if previous_end >= 0:
            separator = text[previous_end:key_start]
        key, index = _DECODER.raw_decode(text, key_start)
        index = _expect(text, index, ":")
        value_start = _skip(text, index)
        _, value_end = _DECODER.raw_decode(text, value_start)
        members[str(key)] = (value_start, value_end)
        previous_end = value_end
        index = _skip(text, value_end)
        if text[index] == ",":
            index += 1
            continue
        if text[index] != "}":
            raise ValueError(f"expected ',' or '}}' at offset {index}")
        return members, index, separator


def set_member(text: str, start: int, key: str, value: Any) -> str:
    """``text`` with the object at ``start`` given ``key: value`` (replaced in place, or added last)."""
    members, close, separator = member_spans(text, start)
    rendered = json.dumps(value, ensure_ascii=False, allow_nan=False)  # what orjson, the gateway's parser, reads
    if key in members:
        value_start, value_end = members[key]
        return text[:value_start] + rendered + text[value_end:]
    addition = f"{json.dumps(key)}: {rendered}"
    if members:
        last_end = max(end for _, end in members.values())
        return text[:last_end] + separator + addition + text[last_end:]
    return text[:close] + addition + text[close:]


def annotate(path: Path, records: Mapping[str, Any], key: str = "measured") -> list[str]:
    """Write ``records`` (by registry name) into each entry's ``key``; returns the names written. An existing
    record is merged at its top level: what this run measured replaces what was there, the rest (a rating not
    given this time, parts added by hand) stays. Raises RegistryChanged if the file changed meanwhile,
    RegistryError if the result would not load."""
    from app.core.registry import parse_registry

    original = path.read_bytes()
    text = original.decode("utf-8")
    written: list[str] = []
    for start, _, item in reversed(entry_spans(text)):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in records:
            old = item.get(key)
            new = {**old, **records[name]} if isinstance(old, dict) and isinstance(records[name], dict) \
                else records[name]
            text = set_member(text, start, key, new)
            written.append(name)
    parse_registry(text.encode("utf-8"), label=path.name, base_dir=path.parent)  # loads as the gateway loads it
    _replace(path, text, original)
    return list(reversed(written))


def _replace(path: Path, text: str, original: bytes) -> None:
    """Write ``text`` over the real file (through a symbolic link), keeping its mode, unless it changed."""
    target = path.resolve()
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        if target.read_bytes() != original:
            raise RegistryChanged(f"{path} changed on disk while it was being annotated; nothing was written "
                                  "(run the command again).")
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


def append_entry(path: Path, item: Mapping[str, Any]) -> int:
    """Append ``item`` as a new entry, laid out like the file's last entry is separated from the one before it
    (every other byte stays); a missing file is created. Returns the number of entries. Raises RegistryError if
    the result would not load (a duplicate name, a bad field: nothing is written), RegistryChanged if the file
    changed meanwhile."""
    from app.core.registry import parse_registry

    rendered = json.dumps(item, ensure_ascii=False, allow_nan=False)
    if not path.exists():
        text = f"[\n  {rendered}\n]\n"
        parse_registry(text.encode("utf-8"), label=path.name, base_dir=path.parent)
        path.write_text(text, encoding="utf-8")
        return 1
    original = path.read_bytes()
    text = original.decode("utf-8")
    spans = entry_spans(text)
    if spans:
        last_start, last_end, _ = spans[-1]
        if len(spans) > 1:
            separator = text[spans[-2][1]:last_start]
        else:  # one entry: the same indentation on a line of its own
            line_start = text.rfind("\n", 0, last_start) + 1
            separator = ",\n" + text[line_start:last_start] if line_start else ", "
        text = text[:last_end] + separator + rendered + text[last_end:]
    else:
        close = text.rindex("]")
        text = text[:close].rstrip() + f"\n  {rendered}\n" + text[close:]
    registry = parse_registry(text.encode("utf-8"), label=path.name, base_dir=path.parent)
    _replace(path, text, original)
    return len(registry)
