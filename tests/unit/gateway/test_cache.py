"""The response cache's storage: LRU within GATEWAY_CACHE_MAX_BYTES, TTL and max-age, a registry change dropping
only the changed model's entries, and entries packed for Redis coming back whole."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from app.core.metrics import Metrics
from app.core.registry import build_registry
from app.core.settings import Settings
from app.gateway.cache import Entry, ResponseCache

REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}, {"name": "chat-b", "task": "chat", "min_ram_gb": 1}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(clock: Clock, **settings: object) -> ResponseCache:
    return ResponseCache(Settings(_env_file=None, **settings), Metrics(), None, clock=clock)  # type: ignore[call-arg]


def _entry(model: str = "chat-a", size: int = 100, kept_at: float = 1000.0) -> Entry:
    return Entry(stream=False, body=b"x" * size, model=model, headers=[], kept_at=kept_at)


def test_least_recently_used_entries_go_first_within_the_byte_bound() -> None:
    clock = Clock()
    cache = _cache(clock, cache_max_bytes=3 * len(_entry().pack()))  # room for three

    async def run() -> list[bool]:
        for key in "abc":
            await cache.put(key, _entry())
        await cache.get("a")  # used: "b" is now the oldest
        await cache.put("d", _entry())
        return [await cache.get(key) is not None for key in "abcd"]

    assert asyncio.run(run()) == [True, False, True, True]


def test_nothing_is_kept_with_no_bytes_or_past_the_ttl_or_max_age() -> None:
    clock = Clock()
    none = _cache(clock, cache_max_bytes=0)
    asyncio.run(none.put("a", _entry()))
    assert asyncio.run(none.get("a")) is None
    cache = _cache(clock, cache_ttl=60)
    asyncio.run(cache.put("a", _entry()))
    clock.now += 30
    assert asyncio.run(cache.get("a", max_age=10)) is None  # older than the client accepts
    assert asyncio.run(cache.get("a")) is not None
    clock.now += 31
    assert asyncio.run(cache.get("a")) is None


def test_a_registry_change_drops_only_the_changed_models_entries() -> None:
    cache = _cache(Clock())
    cache.apply(build_registry(REGISTRY))
    for key, model in (("a", "chat-a"), ("b", "chat-b")):
        asyncio.run(cache.put(key, _entry(model)))
    cache.apply(build_registry(REGISTRY))  # the same registry again: nothing dropped
    assert asyncio.run(cache.get("a")) is not None
    changed = [{**REGISTRY[0], "notes": "a new template"}, REGISTRY[1]]
    old = dict(cache.fingerprints)
    cache.apply(build_registry(changed))
    assert asyncio.run(cache.get("a")) is None and asyncio.run(cache.get("b")) is not None
    assert cache.fingerprints["chat-a"] != old["chat-a"] and cache.fingerprints["chat-b"] == old["chat-b"]


@given(body=st.binary(max_size=300), stream=st.booleans(), created=st.integers(0, 2**40),
       usage=st.none() | st.dictionaries(st.sampled_from(["prompt_tokens", "total_tokens"]), st.integers(0, 9999)))
def test_an_entry_packed_for_redis_comes_back_whole(body: bytes, stream: bool, created: int,
                                                    usage: dict[str, int] | None) -> None:
    entry = Entry(stream=stream, body=body, model="m", headers=[("x-gateway-model", "m")], answer_id="chatcmpl-1",
                  created=created, usage=usage, answer={"id": "chatcmpl-1"} if not stream else None)
    assert Entry.unpack(entry.pack()) == entry
