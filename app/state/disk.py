"""Room on the state directory's disk: what the gateway checks before writes that need it (uploads, stored
responses, a batch's output), so a full disk is a clear 507 up front and not a file cut in half.

``full`` is true while the free space is under ``GATEWAY_STATE_MIN_FREE_BYTES`` (read at most once a second, less
what was written since), and
for a few seconds after a write failed for want of space (``ENOSPC``, SQLite's "disk is full", Redis at
``maxmemory``) — whatever the free space says, since a quota or another volume may be what ran out.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Callable
from pathlib import Path

_READ_EVERY = 1.0  # seconds a reading of the free space is trusted
_FULL_FOR = 5.0  # seconds a write that ran out of space makes ``full`` true
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskSpace:
    def __init__(self, path: Path, min_free: int, clock: Callable[[], float] = time.monotonic,
                 on_reading: Callable[[int, bool], None] | None = None) -> None:
        self.path = path
        self.min_free = min_free
        self.clock = clock
        self.on_reading = on_reading  # (free bytes, full): the gateway's metrics
        self._free = -1
        self._read_at = float("-inf")
        self._ran_out_at = float("-inf")

    def free(self) -> int:
        """Free bytes on the state directory's disk (-1: it cannot be read)."""
        now = self.clock()
        if now - self._read_at >= _READ_EVERY:
            self._read_at = now
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self._free = shutil.disk_usage(self.path).free
            except OSError:
                self._free = -1
            self._publish()
        return self._free

    @property
    def full(self) -> bool:
        self.free()
        return self._full()

    def _full(self) -> bool:
        return (0 <= self._free < self.min_free) or self.clock() - self._ran_out_at < _FULL_FOR

    def spent(self, size: int) -> None:
        """``size`` bytes were just written: the reading goes down by as much until the next one (so writes in
        quick succession cannot all pass one stale reading)."""
        if self._free >= 0:
            self._free -= size
            self._publish()

    def ran_out(self) -> None:
        """A write just failed for want of space."""
        self._ran_out_at = self.clock()
        self._read_at = float("-inf")  # read again at the next look
        self._publish()

    def _publish(self) -> None:
        if self.on_reading is not None:
            self.on_reading(self._free, self._full())

    def describe(self) -> dict[str, object]:
        """What ``/readyz`` says of it."""
        free = self.free()
        return {"free_bytes": free if free >= 0 else None, "min_free_bytes": self.min_free, "full": self._full()}


def out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE
