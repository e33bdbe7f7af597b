"""The state store's interface and the quota rules both implementations follow.

Records: values by ``space`` and ``key`` with an owner (the team key's name, for reading back only one's own), a
creation time (kept when the record is written again), an optional expiry; listed oldest or newest first. Sizes
count live records only (expired ones are swept with their index entries); a trim keeps one owner, or the space,
within a bound by dropping the records that would expire soonest — never another owner's.

Quotas, per key name, in fixed windows (the current UTC minute, the current UTC day): a request is admitted if
the key is under every limit counting what the requests in flight have reserved; admission reserves the tokens
the request may spend (its prompt, estimated, plus its output budget — at most the key's whole limit, so a large
request can still run alone) and holds a slot; :meth:`StateStore.settle` replaces the reservation with the tokens
really spent (refunding the rest) and frees the slot. So requests admitted together can overspend a token limit
by at most one request's tokens (an estimate that was short), never by all of them. Each slot names its holder
(one store instance: a process), whose lease :meth:`StateStore.heartbeat` renews: the slots of a holder whose lease
lapsed (a process SIGKILLed) are freed by the next admission, within ``LEASE`` seconds — ``stale_after`` is only
the last resort for a holder that stays alive and forgets to settle.

Usage tallies (``app.access.usage``): counters per bucket of time (a minute, an hour, a day) and set of dimensions
(key, model, endpoint, task, node, batch), added to — never rewritten — so every process of a host or a fleet adds
its own requests into the same buckets; each bucket expires a while after it ends (the finer, the sooner).

A store out of space (a full disk under SQLite, Redis at ``maxmemory``) raises :class:`StoreFull`, a kind of
:class:`StoreDown` that callers turn into a 507 for writes that would need the room.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

REASONS = {1: "requests_per_minute", 2: "tokens_per_minute", 3: "tokens_per_day", 4: "max_concurrency"}
_PLAIN, _PACKED = b"r", b"z"


LEASE = 6.0  # seconds a holder's slots outlive its last heartbeat (renewed every third of that)
FAR = 1e12  # the expiry order of a record that never expires: after every one that does


class StoreDown(Exception):
    """The store could not be reached (Redis down, a SQLite file locked for too long)."""


class StoreFull(StoreDown):
    """The store has no room for the write (a full disk, Redis at ``maxmemory``): nothing of it was kept."""


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    owner: str
    value: bytes
    created: float
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's quotas (0: no limit)."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    max_concurrency: int = 0

    def clamp(self, tokens: int) -> int:
        """A reservation is at most the key's smallest token limit: a request larger than it may still run alone."""
        bounds = [limit for limit in (self.tokens_per_minute, self.tokens_per_day) if limit]
        return min([tokens, *bounds])


@dataclass(frozen=True, slots=True)
class Usage:
    """A key's counters now (tokens spent, reserved by requests in flight, slots), and when each window resets."""

    requests: int
    tokens_minute: int
    tokens_day: int
    reserved: int
    running: int
    minute_resets: float
    day_resets: float


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    reason: str | None  # the limit it is over
    usage: Usage


# What a usage bucket is counted by, and what it counts (``Tally``): the store keeps them in this order.
DIMENSIONS = ("key", "model", "endpoint", "task", "node", "batch")
COUNTERS = (
    "requests", "input_tokens", "output_tokens", "estimated_requests", "cached_requests", "error_requests",
    "runtime_seconds", "latency_seconds", "ttft_seconds", "ttft_requests", "cost", "priced_requests",
)


@dataclass(frozen=True, slots=True)
class Tally:
    """One usage bucket's counters for one set of dimensions (``DIMENSIONS``, ``COUNTERS``, in order)."""

    width: int  # seconds: 60, 3600 or 86400
    start: int  # UTC epoch seconds, a multiple of ``width``
    dims: tuple[str, ...]
    counts: tuple[float, ...]


def windows(now: float) -> tuple[int, int, float, float]:
    """(minute number, day number, minute reset, day reset) for UTC epoch seconds ``now``."""
    minute, day = int(now // 60), int(now // 86400)
    return minute, day, (minute + 1) * 60.0, (day + 1) * 86400.0


def verdict(limits: Limits, requests: int, tokens_minute: int, tokens_day: int, reserved: int, running: int,
            tokens: int) -> int:
    """0 to admit, else the number of the limit it would break (``REASONS``)."""
    if limits.requests_per_minute and requests >= limits.requests_per_minute:
        return 1
    if limits.tokens_per_minute and tokens_minute + reserved + tokens > limits.tokens_per_minute:
        return 2
    if limits.tokens_per_day and tokens_day + reserved + tokens > limits.tokens_per_day:
        return 3
    if limits.max_concurrency and running >= limits.max_concurrency:
        return 4
    return 0


def pack(value: bytes) -> bytes:
    """Values over 512 bytes are stored compressed (zlib, fast level)."""
    return _PACKED + zlib.compress(value, 1) if len(value) > 512 else _PLAIN + value


def unpack(stored: bytes) -> bytes:
    return zlib.decompress(stored[1:]) if stored[:1] == _PACKED else stored[1:]


class StateStore(Protocol):
    name: str  # "sqlite" or "redis"
    lease: float  # seconds this holder's quota slots outlive its last heartbeat

    async def put(self, space: str, key: str, value: bytes, *, owner: str = "", ttl: float | None = None) -> None:
        """Write a record (written again: its value, owner and expiry replaced, its creation time kept)."""
        ...

    async def get(self, space: str, key: str) -> Record | None: ...

    async def get_many(self, space: str, keys: list[str]) -> dict[str, Record]:
        """The live records of these keys (missing ones left out), in one round trip."""
        ...

    async def delete(self, space: str, key: str) -> bool: ...

    async def touch(self, space: str, keys: list[str], ttl: float) -> None:
        """Expire these records ``ttl`` seconds from now (a conversation's earlier turns live as long as its last)."""
        ...

    async def scan(self, space: str, *, owner: str | None = None, after: str | None = None, limit: int = 100,
                   newest_first: bool = False) -> list[Record]:
        """Records by creation, oldest first unless ``newest_first`` (``after``: from the one after that key), of
        one owner if given."""
        ...

    async def size(self, space: str, owner: str | None = None) -> int:
        """Bytes the live records of the space (of one owner) hold, as stored."""
        ...

    async def trim(self, space: str, max_bytes: int, *, owner: str | None = None) -> int:
        """Delete live records of ``owner`` (None: of the space), those that would expire soonest first, until
        they hold at most ``max_bytes``; returns how many went. Nobody else's records are touched."""
        ...

    async def sweep(self, space: str) -> int:
        """Drop the records that expired and every index entry of theirs; returns how many."""
        ...

    async def add_tallies(self, space: str, tallies: list[Tally], keep: dict[int, float]) -> None:
        """Add these counters into their buckets (created at 0), each kept ``keep[width]`` seconds past its end."""
        ...

    async def tallies(self, space: str, width: int, start: int, end: int, key: str | None = None) -> list[Tally]:
        """The live buckets of ``width`` starting in ``[start, end)`` (of one key if given), any order."""
        ...

    async def heartbeat(self) -> None:
        """Renew this holder's lease on its quota slots (a live process calls it every few seconds)."""
        ...

    async def admit(self, name: str, limits: Limits, slot: str, tokens: int, stale_after: float) -> Decision: ...

    async def settle(self, name: str, slot: str, tokens: int) -> None: ...

    async def aclose(self) -> None: ...
