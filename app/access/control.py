"""What a key may use and spend: the team keys in force (``app.access.keys``, reloaded when the file changes),
their model and task allow-lists, and their quotas — kept in the state store (``app.state``), so the workers of a
host (SQLite) or the replicas behind one URL (Redis) hold a key to its quota together.

``admit`` checks the key's quotas before a request is queued, reserving the tokens it may spend, and returns the
``x-ratelimit-*`` headers OpenAI clients read (the tokens left count what requests in flight reserved);
``charge`` settles the reservation to the tokens that really came back. A key's budgets (``max_cost_per_day``,
``max_tokens_per_month``) are checked against its usage (``app.access.usage``, read at most once a second): a request
admitted while the key is under them may overspend by what that second and the requests in flight spend. The store
down: fail open (default;
logged loudly, counted in ``gateway_quota_store_errors_total``) or closed (503), by ``GATEWAY_QUOTA_FAIL_OPEN``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

from app.access.keys import ApiKey, Budget, KeyRing, KeysError, Match, Quota, load_keys
from app.access.usage import Spent, UsageBook
from app.core.errors import GatewayError
from app.core.files import file_mtime
from app.core.metrics import Metrics
from app.core.registry import ModelEntry, Registry
from app.core.settings import Settings
from app.policy.routing import Route
from app.state import Decision, StateStore, StoreDown

log = logging.getLogger("foundry_gateway.keys")
STORE_RETRY_AFTER = 2.0  # seconds a failed quota store is left alone
STORE_TIMEOUT = 2.0  # seconds a quota call may take before the store counts as down
# the quotas OpenAI's x-ratelimit-{limit,remaining,reset}-* headers tell of, by the word those headers end in
RATELIMIT_HEADERS = {Quota.REQUESTS_PER_MINUTE: b"requests", Quota.TOKENS_PER_MINUTE: b"tokens"}


class Access:
    def __init__(self, settings: Settings, metrics: Metrics, store: StateStore,
                 usage: UsageBook | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.path: Path | None = settings.keys_file
        self.keyring = load_keys(self.path) if self.path is not None else KeyRing()  # broken at start: fatal
        self._mtime = file_mtime(self.path)
        self.store = store
        self.usage = usage  # what keys spent, for their budgets (None: usage off, budgets not enforced)
        self._last_store_error = 0.0
        self._down_until = 0.0  # the store failed: until then it is not asked (one timeout, not one per request)
        self.metrics.key_names(k.name for k in self.keyring)

    # --- the keys file --------------------------------------------------------------------------------------

    def reload_if_changed(self) -> None:
        if self.path is None or file_mtime(self.path) == self._mtime:
            return
        self._mtime = file_mtime(self.path)
        try:
            self.keyring = load_keys(self.path)
        except (KeysError, OSError, UnicodeDecodeError) as exc:
            problems = exc.problems if isinstance(exc, KeysError) else [exc.__class__.__name__]
            log.error("keys file %s rejected, the last good keys stay in force: %s", self.path, "; ".join(problems))
            self.metrics.keys_reloads.labels("error").inc()
            return
        self.metrics.keys_reloads.labels("ok").inc()
        self.metrics.key_names(k.name for k in self.keyring)
        log.info("keys file %s reloaded: %d keys", self.path, len(self.keyring))

    def find(self, token: str) -> ApiKey | None:
        return self.keyring.find(token) if token else None

    def match(self, token: str) -> Match | None:
        """The key a token belongs to, expired or not (the middleware's 401 says which)."""
        return self.keyring.match(token) if token else None

    # --- what a key may use ---------------------------------------------------------------------------------

    def allowed(self, key: ApiKey | None, registry: Registry) -> frozenset[str] | None:
        """Registry names the key may use (None: all)."""
        if key is None or key.models is None:
            return None
        return frozenset(e.name for e in registry if any(n in key.models for n in e.names))

    def check_model(self, key: ApiKey | None, entry: ModelEntry | None, allowed: frozenset[str] | None) -> None:
        """A model outside the key's allow-list: 403 naming the key and what it may use."""
        if key is not None and entry is not None and allowed is not None and entry.name not in allowed:
            self.metrics.key_rejections.labels(key.name, "model_not_allowed").inc()
            raise GatewayError(403, f"Key '{key.name}' may not use model '{entry.name}'. It may use: "
                                    f"{', '.join(sorted(allowed)) or 'no model in this registry'}.",
                               code="model_not_allowed", param="model")

    def check_route(self, key: ApiKey | None, route: Route, allowed: frozenset[str] | None) -> None:
        """A route decided on the entries that will really serve (whatever name asked for them) and its task."""
        for entry in (route.model, *route.fallbacks):
            self.check_model(key, entry, allowed)
        self.check_task(key, route.task)

    def check_task(self, key: ApiKey | None, task: str) -> None:
        if key is not None and key.tasks is not None and task not in key.tasks:
            self.metrics.key_rejections.labels(key.name, "task_not_allowed").inc()
            raise GatewayError(403, f"Key '{key.name}' may not use task '{task}' (it may use: "
                                    f"{', '.join(sorted(key.tasks))}).", code="task_not_allowed", param="task")

    # --- quotas ---------------------------------------------------------------------------------------------

    async def admit(self, key: ApiKey | None, slot: str, tokens: int = 0) -> list[tuple[bytes, bytes]]:
        """Admit a request against its key's quotas, reserving ``tokens`` (its prompt and output budget): the
        x-ratelimit headers, or a 429 carrying them."""
        if key is None:
            return []
        spent = await self.check_budgets(key) if key.budgeted else []
        if not key.limited:
            self.metrics.key_requests.labels(key.name).inc()
            return spent
        decision = cast(Decision | None, await self._guarded(
            self.store.admit(key.name, key.limits, slot, tokens, self.settings.total_timeout)))
        self.metrics.key_requests.labels(key.name).inc()
        if decision is None:  # the store is down and we fail open
            return spent
        headers = _headers(key, decision)
        if not decision.admitted:
            over = Quota(decision.reason) if decision.reason else None  # the store names the limit it is over
            self.metrics.key_rejections.labels(key.name, over or "quota").inc()
            wait = max(1, math.ceil((decision.usage.day_resets if over == Quota.TOKENS_PER_DAY else
                                     decision.usage.minute_resets) - time.time()))
            if over == Quota.MAX_CONCURRENCY:
                wait = 1
            reason = over or "quota"
            raise GatewayError(429, f"Key '{key.name}' is over its {reason.replace('_', ' ')} quota "
                                    f"({_limit(key, over)}); retry in {wait}s.",
                               code="rate_limit_exceeded", type="rate_limit_error",
                               headers={"retry-after": str(wait), **{k.decode(): v.decode() for k, v in headers}})
        return [*headers, *spent]

    async def check_budgets(self, key: ApiKey) -> list[tuple[bytes, bytes]]:
        """The key's budget headers, or a 429 carrying them when one is spent (``x-should-retry: false``: the
        OpenAI SDK would otherwise retry a refusal that lasts until the window resets)."""
        if self.usage is None:
            return []
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                spent = await self.usage.spent(key.name)
        except (StoreDown, TimeoutError, OSError) as exc:
            self._store_error(exc)
            if self.settings.quota_fail_open:
                return []
            raise GatewayError(503, "The usage store is unavailable and the gateway fails closed.",
                               code="quota_store_unavailable") from exc
        headers, over = _budget_headers(key, spent)
        if over is None:
            return headers
        self.metrics.key_rejections.labels(key.name, over).inc()
        resets = spent.day_resets if over == Budget.MAX_COST_PER_DAY else spent.month_resets
        wait = max(1, math.ceil(resets - time.time()))
        what = (f"its max cost per day ({spent.cost_today:.4g} of {key.max_cost_per_day:g})"
                if over == Budget.MAX_COST_PER_DAY else
                f"its max tokens per month ({spent.tokens_month} of {key.max_tokens_per_month})")
        raise GatewayError(429, f"Key '{key.name}' has spent {what}; it resets in {_duration(wait)}.",
                           code="insufficient_quota", type="insufficient_quota",
                           headers={"retry-after": str(wait), "x-should-retry": "false",
                                    **{k.decode(): v.decode() for k, v in headers}})

    def key_named(self, name: str) -> ApiKey | None:
        """The team key of that name in the keys file now (a batch runs as the key that created it)."""
        return next((key for key in self.keyring if key.name == name), None)

    async def charge(self, key: ApiKey | None, slot: str, prompt_tokens: int, completion_tokens: int, *,
                     metered: bool) -> None:
        """A request ended: its tokens in the key's metrics and, if it was admitted against quotas, its reservation
        settled to them (the rest refunded, all of it when nothing came back)."""
        if key is None:
            return
        for kind, count in (("input", prompt_tokens), ("output", completion_tokens)):
            if count:
                self.metrics.key_tokens.labels(key.name, kind).inc(count)
        if metered:
            await self._guarded(self.store.settle(key.name, slot, prompt_tokens + completion_tokens))

    async def _guarded(self, call: Coroutine[Any, Any, Any]) -> object:
        if time.monotonic() < self._down_until:  # it failed a moment ago: do not make every request wait on it
            call.close()
            self.metrics.quota_store_errors.inc()
            if self.settings.quota_fail_open:
                return None
            raise GatewayError(503, "The quota store is unavailable and the gateway fails closed.",
                               code="quota_store_unavailable")
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                return await call
        except (StoreDown, TimeoutError, OSError) as exc:
            self._store_error(exc)
            if self.settings.quota_fail_open:
                return None
            raise GatewayError(503, "The quota store is unavailable and the gateway fails closed.",
                               code="quota_store_unavailable") from exc

    def _store_error(self, exc: BaseException) -> None:
        self.metrics.quota_store_errors.inc()
        self._down_until = time.monotonic() + STORE_RETRY_AFTER
        now = time.monotonic()
        if now - self._last_store_error > 5:  # loud, but not a line per request
            self._last_store_error = now
            action = "letting requests through (GATEWAY_QUOTA_FAIL_OPEN=true)" if self.settings.quota_fail_open \
                else "refusing requests (GATEWAY_QUOTA_FAIL_OPEN=false)"
            log.error("QUOTA STORE UNAVAILABLE (%s: %s): %s", exc.__class__.__name__, exc, action)



def _limit(key: ApiKey, quota: Quota | None) -> str:
    return f"{getattr(key, quota)}" if quota else "?"


def _budget_headers(key: ApiKey, spent: Spent) -> tuple[list[tuple[bytes, bytes]], Budget | None]:
    """``x-ratelimit-{limit,remaining,reset}-cost-per-day`` and ``…-tokens-per-month``, and the budget spent."""
    out: list[tuple[bytes, bytes]] = []
    over: Budget | None = None
    now = time.time()
    for budget, limit, used, resets in (
            (Budget.MAX_COST_PER_DAY, key.max_cost_per_day, spent.cost_today, spent.day_resets),
            (Budget.MAX_TOKENS_PER_MONTH, key.max_tokens_per_month, spent.tokens_month, spent.month_resets)):
        if not limit:
            continue
        name = budget.value.removeprefix("max_").replace("_", "-").encode()
        left = max(0.0, limit - used)
        money = budget == Budget.MAX_COST_PER_DAY
        out += [(b"x-ratelimit-limit-" + name, _amount(limit, money)),
                (b"x-ratelimit-remaining-" + name, _amount(left, money)),
                (b"x-ratelimit-reset-" + name, f"{max(0.0, resets - now):.0f}s".encode())]
        if used >= limit and over is None:
            over = budget
    return out, over


def _amount(value: float, money: bool) -> bytes:
    return (f"{value:.6g}" if money else str(int(value))).encode()


def _duration(seconds: int) -> str:
    if seconds < 3600:
        return f"{max(1, seconds // 60)}m" if seconds >= 60 else f"{seconds}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _headers(key: ApiKey, decision: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI's rate-limit headers for what the key has left in the current windows."""
    usage = decision.usage
    out: list[tuple[bytes, bytes]] = []
    minute_reset = f"{max(0.0, usage.minute_resets - time.time()):.0f}s".encode()
    for quota, used in ((Quota.REQUESTS_PER_MINUTE, usage.requests),
                        (Quota.TOKENS_PER_MINUTE, usage.tokens_minute + usage.reserved)):
        limit: int = getattr(key, quota)
        if limit:
            name = RATELIMIT_HEADERS[quota]
            out += [(b"x-ratelimit-limit-" + name, str(limit).encode()),
                    (b"x-ratelimit-remaining-" + name, str(max(0, limit - used)).encode()),
                    (b"x-ratelimit-reset-" + name, minute_reset)]
    return out

