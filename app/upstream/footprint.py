"""What each model really uses in RAM, measured: the runtime's private memory before and after a load.

``min_ram_gb`` in the registry is a guess someone wrote down; once a model has been loaded the gateway
knows better. Around each load it reads the runtime process tree's private memory (USS: pages no other
process shares, so a library mapped by many is not counted again) and records the growth, per upstream id,
in ``gateway-footprints.json`` beside Foundry Local's cache, so a restart knows it too. A sample is taken only
when nothing else was loaded, unloaded or generating meanwhile (the growth would be someone else's too), and
the figure is the median of a model's last few samples, so one disturbed sample cannot lock a model out.

Fit and eviction then use max(``min_ram_gb``, measured): a model that turns out bigger than its entry says is
treated as bigger; one that is smaller keeps the registry's figure (the operator's margin).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil

log = logging.getLogger("foundry_gateway.footprint")
GIB = 1024**3
FILE_NAME = "gateway-footprints.json"
SAMPLES = 5  # the last few samples per model; the median is the figure


def private_bytes(pid: int) -> int | None:
    """USS of a process and all its children (None if it is gone or cannot be read)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # a child that just exited counts nothing
            total += process.memory_full_info().uss
    return total


class Footprints:
    """Measured RAM per upstream id, persisted as JSON (written atomically; an unreadable file is ignored)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.bytes: dict[str, int] = {}  # the figure: median of the samples
        self.samples: dict[str, list[int]] = {}
        self.version = 0  # bumped on every change: routing decisions cached on sizes are recomputed
        if path is not None and path.is_file():
            try:
                data = orjson.loads(path.read_bytes())
                for key, value in data.get("models", {}).items():
                    self.samples[str(key)] = [int(x) for x in value.get("samples", [value["bytes"]])][-SAMPLES:]
                    self.bytes[str(key)] = int(value["bytes"])
            except (orjson.JSONDecodeError, OSError, AttributeError, KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring %s: %s", path, exc)

    def gb(self, upstream_id: str) -> float | None:
        value = self.bytes.get(upstream_id)
        return None if value is None else value / GIB

    def record(self, upstream_id: str, grown: int) -> None:
        samples = [*self.samples.get(upstream_id, []), grown][-SAMPLES:]
        self.samples[upstream_id] = samples
        self.bytes[upstream_id] = int(statistics.median(samples))
        self.version += 1
        if self.path is None:
            return
        models = {k: {"bytes": v, "gb": round(v / GIB, 4), "samples": self.samples.get(k, [v])}
                  for k, v in sorted(self.bytes.items())}
        payload = orjson.dumps({"measured_at": time.time(), "models": models}, option=orjson.OPT_INDENT_2)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_bytes(payload)
            temporary.replace(self.path)
        except OSError as exc:
            log.warning("could not save measured RAM to %s: %s", self.path, exc)


class LoadMeter:
    """Measures one load at a time: ``begin()`` before, ``end()`` after. A load that overlapped another load or
    unload measures nothing, nor does the next one after a load that failed (a load that timed out here may
    still finish in the runtime, later). ``reader`` gives the runtime's private bytes now (None: unknown); it
    reads /proc (~15 ms per GiB of runtime), so it runs in a thread."""

    def __init__(self, reader: Callable[[], int | None]) -> None:
        self.reader = reader
        self.changes = 0  # loads and unloads started so far
        self.running = 0  # loads in progress
        self.tainted = False  # a failed load may still be growing the runtime

    def changed(self) -> None:
        """Something else changed the runtime's memory (an unload): loads measuring now measure nothing."""
        self.changes += 1

    async def begin(self, quiet: bool = True) -> tuple[int, int | None]:
        """A load starts (``quiet``: no other model is generating); the token ``end`` needs."""
        self.changes += 1
        self.running += 1
        token = self.changes
        sample = quiet and self.running == 1 and not self.tainted
        self.tainted = False
        return token, await asyncio.to_thread(self.reader) if sample else None

    async def end(self, token: tuple[int, int | None], *, ok: bool, quiet: bool = True) -> int | None:
        """It ended: the growth, if this was the only change while it ran and nothing else generated."""
        self.running -= 1
        started, before = token
        if not ok:
            self.tainted = True
            return None
        if before is None or self.changes != started or self.running or not quiet:
            return None
        after = await asyncio.to_thread(self.reader)
        return None if after is None else max(0, after - before)
