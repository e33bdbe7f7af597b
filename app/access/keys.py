"""API keys for teams: who may use which models and tasks, and how much (``GATEWAY_KEYS_FILE``).

The file is JSON or YAML, ``{"keys": [{"name", "key" or "key_sha256", "models", "tasks", "requests_per_minute",
"tokens_per_minute", "tokens_per_day", "max_concurrency", "priority", "storage_bytes", "max_cost_per_day",
"max_tokens_per_month", "expires_at", "previous"}]}``. A key past its ``expires_at`` (ISO 8601 or Unix seconds) is
refused with a 401 saying so; ``previous`` holds the secrets a rotation replaced (``[{"key_sha256", "expires_at"}]``),
each still accepted, as the same key, until its own ``expires_at`` (the overlap window), so usage stays with the
name. ``foundry-gateway keys
add`` writes only the SHA-256 of a key it generated (and prints the key once); a plain ``key`` is accepted for
hand-written files. A presented key is hashed and compared with every stored hash in constant time; a key is never
logged (its name is). The file is reloaded when it changes; a broken one is rejected with its reasons and the last
good one stays in force, like the registry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.state.base import Limits


class Quota(StrEnum):
    """A key's quotas: each is its field in the keys file and on :class:`ApiKey`, and the limit a 429 names (the
    state store's ``Decision.reason``)."""

    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    TOKENS_PER_DAY = "tokens_per_day"
    MAX_CONCURRENCY = "max_concurrency"


class Budget(StrEnum):
    """A key's spending limits over longer windows than the quotas (checked against its usage, ``app.access.usage``):
    each is its field in the keys file and the limit a 429 names."""

    MAX_COST_PER_DAY = "max_cost_per_day"  # the registry's prices, this UTC day
    MAX_TOKENS_PER_MONTH = "max_tokens_per_month"  # input and output tokens, this UTC month


LIMITS = tuple(Quota)
BUDGETS = tuple(Budget)
FIELDS = ("name", "key", "key_sha256", "models", "tasks", *LIMITS, *BUDGETS, "priority", "storage_bytes",
          "expires_at", "previous")


class KeysError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str
    models: frozenset[str] | None = None  # registry names and aliases it may use (None: all)
    tasks: frozenset[str] | None = None
    requests_per_minute: int = 0  # 0: no limit
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    max_concurrency: int = 0
    priority: str | None = None  # its requests' default X-Priority
    storage_bytes: int = 0  # bound on its stored responses (0: GATEWAY_RESPONSES_MAX_BYTES)
    max_cost_per_day: float = 0.0  # 0: no budget
    max_tokens_per_month: int = 0
    expires_at: float | None = None  # Unix seconds after which it is refused (None: never)
    previous: tuple[tuple[str, float], ...] = ()  # (SHA-256, until): secrets a rotation replaced, still accepted

    @property
    def budgeted(self) -> bool:
        return bool(self.max_cost_per_day or self.max_tokens_per_month)

    @property
    def limited(self) -> bool:
        return any(getattr(self, limit) for limit in LIMITS)

    @property
    def limits(self) -> Limits:
        return Limits(self.requests_per_minute, self.tokens_per_minute, self.tokens_per_day, self.max_concurrency)

    @property
    def counts_tokens(self) -> bool:
        """Whether admission must estimate the request's tokens (a token quota)."""
        return bool(self.tokens_per_minute or self.tokens_per_day)

    def describe(self) -> dict[str, Any]:
        """What ``keys ls`` and logs may show: everything but the hash."""
        return {"name": self.name, "models": sorted(self.models) if self.models is not None else None,
                "tasks": sorted(self.tasks) if self.tasks is not None else None,
                **{limit.value: getattr(self, limit) for limit in LIMITS},
                **{budget.value: getattr(self, budget) or None for budget in BUDGETS}, "priority": self.priority,
                "storage_bytes": self.storage_bytes or None, "expires_at": _iso(self.expires_at),
                "previous_secrets": [{"expires_at": _iso(until)} for _, until in self.previous]}


@dataclass(frozen=True, slots=True)
class Match:
    """A presented key's key, and whether (and when) the secret presented stopped being accepted."""

    key: ApiKey
    until: float | None  # when this secret stops (stopped) working: the key's expiry, or a replaced secret's
    rotated: bool  # the secret presented is one a rotation replaced

    def expired(self, now: float | None = None) -> bool:
        return self.until is not None and (time.time() if now is None else now) >= self.until

    def refusal(self) -> str:
        """The 401's message for an expired match."""
        when = _iso(self.until)
        if self.rotated:
            return (f"This secret of key '{self.key.name}' was replaced by a rotation and stopped working at {when}; "
                    "use the new one.")
        return f"Key '{self.key.name}' expired at {when}; ask for a new one (foundry-gateway keys rotate)."


class KeyRing:
    """The keys in force. ``find`` checks a presented key against every hash (constant time per hash)."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self.keys = tuple(keys)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, presented: str) -> ApiKey | None:
        """The key a presented secret opens now (None: no key, or an expired one)."""
        match = self.match(presented)
        return match.key if match is not None and not match.expired() else None

    def match(self, presented: str) -> Match | None:
        """The key a presented secret belongs to, expired or not (the caller says which 401)."""
        wanted = digest(presented).encode()
        found = None
        for key in self.keys:  # no early exit: the time does not tell which key matched
            if hmac.compare_digest(wanted, key.sha256.encode()):
                found = Match(key, key.expires_at, rotated=False)
            for sha, until in key.previous:
                if hmac.compare_digest(wanted, sha.encode()):
                    found = Match(key, until if key.expires_at is None else min(until, key.expires_at), rotated=True)
        return found


def load_keys(path: Path) -> KeyRing:
    raw = path.read_text(encoding="utf-8")
    return parse_keys(raw, label=path.name, yaml=path.suffix.lower() in (".yaml", ".yml"))


def parse_keys(raw: str, *, label: str = "keys", yaml: bool = False) -> KeyRing:
    try:
        if yaml:
            import yaml as pyyaml

            data = pyyaml.safe_load(raw)
        else:
            data = json.loads(raw)
    except Exception as exc:  # a parser's own error, whichever parser; its text may quote a key: only where
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else \
            f"line {getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')}"
        raise KeysError([f"{label}: not valid {'YAML' if yaml else 'JSON'} ({exc.__class__.__name__} at {where})"]) \
            from None
    items = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise KeysError([f"{label}: must be an object with a 'keys' list"])
    problems: list[str] = []
    keys = [key for position, item in enumerate(items, start=1)
            if (key := _parse_one(item, f"{label}: key {position}", problems)) is not None]
    names = [k.name for k in keys]
    problems += [f"{label}: key name '{n}' is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    hashes = [k.sha256 for k in keys] + [sha for k in keys for sha, _ in k.previous]
    if len(set(hashes)) != len(hashes):
        problems.append(f"{label}: the same key appears under two names")
    if problems:
        raise KeysError(problems)
    return KeyRing(keys)


def _parse_one(item: Any, where: str, problems: list[str]) -> ApiKey | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: must be an object")
        return None
    before = len(problems)
    name = item.get("name")
    where = f"{where} ('{name}')" if isinstance(name, str) else where
    problems += [f"{where}: '{field}' is not a known field (known: {', '.join(FIELDS)})"
                 for field in item if field not in FIELDS and not str(field).startswith(("_", "x-"))]
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}: 'name' is required")
    plain, hashed = item.get("key"), item.get("key_sha256")
    if (plain is None) == (hashed is None):
        problems.append(f"{where}: give exactly one of 'key' and 'key_sha256'")
    elif plain is not None and (not isinstance(plain, str) or len(plain) < 8):
        problems.append(f"{where}: 'key' must be a string of at least 8 characters")
    elif hashed is not None and not _is_sha(hashed):
        problems.append(f"{where}: 'key_sha256' must be 64 hexadecimal characters")
    lists = {}
    for field in ("models", "tasks"):
        value = item.get(field)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
            problems.append(f"{where}: '{field}' must be a list of names")
            value = None
        lists[field] = frozenset(value) if isinstance(value, list) else None
    limits = {}
    for field in LIMITS:
        value = item.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{where}: '{field}' must be an integer ≥ 0 (0: no limit)")
            value = 0
        limits[field.value] = value
    priority = item.get("priority")
    if priority not in (None, "interactive", "batch"):
        problems.append(f"{where}: 'priority' must be 'interactive' or 'batch'")
    cost = item.get("max_cost_per_day", 0)
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost) or cost < 0:
        problems.append(f"{where}: 'max_cost_per_day' must be a number ≥ 0 (0: no budget)")
        cost = 0
    tokens_month = item.get("max_tokens_per_month", 0)
    if isinstance(tokens_month, bool) or not isinstance(tokens_month, int) or tokens_month < 0:
        problems.append(f"{where}: 'max_tokens_per_month' must be an integer ≥ 0 (0: no budget)")
        tokens_month = 0
    expires_at = _instant(item.get("expires_at"), f"{where}: 'expires_at'", problems)
    previous = _previous(item.get("previous"), where, problems)
    storage = item.get("storage_bytes", 0)
    if isinstance(storage, bool) or not isinstance(storage, int) or storage < 0:
        problems.append(f"{where}: 'storage_bytes' must be an integer ≥ 0 (0: GATEWAY_RESPONSES_MAX_BYTES)")
        storage = 0
    if len(problems) > before:
        return None
    sha = digest(plain) if isinstance(plain, str) else str(hashed).lower()
    return ApiKey(name=str(name).strip(), sha256=sha, models=lists["models"], tasks=lists["tasks"],
                  priority=priority, storage_bytes=storage, max_cost_per_day=float(cost),
                  max_tokens_per_month=tokens_month, expires_at=expires_at, previous=previous, **limits)


def _instant(value: Any, where: str, problems: list[str]) -> float | None:
    """``expires_at``: ISO 8601 (a time without a zone is UTC) or Unix seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as one
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    problems.append(f"{where} must be an ISO 8601 time (2027-01-31T00:00:00Z) or Unix seconds")
    return None


def _previous(value: Any, where: str, problems: list[str]) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: 'previous' must be a list of {{key_sha256, expires_at}}")
        return ()
    out = []
    for position, item in enumerate(value, start=1):
        sha = item.get("key_sha256") if isinstance(item, dict) else None
        until = _instant(item.get("expires_at") if isinstance(item, dict) else None,
                         f"{where}: previous {position}: 'expires_at'", problems) if isinstance(item, dict) else None
        if not _is_sha(sha) or until is None:
            problems.append(f"{where}: previous {position} needs 'key_sha256' (64 hexadecimal characters) and "
                            "'expires_at'")
            continue
        out.append((str(sha).lower(), until))
    return tuple(out)


def _is_sha(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


def iso(at: float) -> str:
    """Unix seconds as the keys file writes them: ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(at: float | None) -> str | None:
    return None if at is None else iso(at)
