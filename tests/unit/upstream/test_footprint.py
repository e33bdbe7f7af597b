"""Measured RAM (app.upstream.footprint): the meter counts a load only when nothing else changed meanwhile; measured
sizes persist across restarts; routing uses max(min_ram_gb, measured) and says which figure it used."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from app.core.registry import build_registry
from app.policy.routing import choose
from app.upstream.footprint import GIB, Footprints, LoadMeter, private_bytes


class Reader:
    """Memory that grows as the test says."""

    def __init__(self) -> None:
        self.value = 100

    def __call__(self) -> int:
        return self.value


def test_a_lone_load_is_measured() -> None:
    async def scenario() -> int | None:
        reader = Reader()
        meter = LoadMeter(reader)
        token = await meter.begin()
        reader.value += 50
        return await meter.end(token, ok=True)

    assert asyncio.run(scenario()) == 50


def test_overlapping_changes_measure_nothing() -> None:
    async def scenario() -> list[int | None]:
        reader = Reader()
        meter = LoadMeter(reader)
        first = await meter.begin()
        second = await meter.begin()  # another load while the first runs
        reader.value += 80
        results = [await meter.end(second, ok=True), await meter.end(first, ok=True)]
        third = await meter.begin()
        meter.changed()  # an unload meanwhile
        results.append(await meter.end(third, ok=True))
        busy = await meter.begin(quiet=False)  # another model generating
        results.append(await meter.end(busy, ok=True, quiet=False))
        alone = await meter.begin()
        reader.value += 5
        results.append(await meter.end(alone, ok=True))
        return results

    assert asyncio.run(scenario()) == [None, None, None, None, 5]


def test_a_failed_load_taints_the_next_measurement() -> None:
    async def scenario() -> list[int | None]:
        reader = Reader()
        meter = LoadMeter(reader)
        failed = await meter.begin()
        results = [await meter.end(failed, ok=False)]
        after = await meter.begin()  # the failed load may still be finishing in the runtime
        reader.value += 70
        results.append(await meter.end(after, ok=True))
        clean = await meter.begin()
        reader.value += 3
        results.append(await meter.end(clean, ok=True))
        return results

    assert asyncio.run(scenario()) == [None, None, 3]


def test_shrinking_counts_as_zero_and_unknown_as_nothing() -> None:
    async def scenario() -> list[int | None]:
        reader = Reader()
        meter = LoadMeter(reader)
        token = await meter.begin()
        reader.value -= 30
        unknown = LoadMeter(lambda: None)
        return [await meter.end(token, ok=True), await unknown.end(await unknown.begin(), ok=True)]

    assert asyncio.run(scenario()) == [0, None]


def test_the_figure_is_the_median_of_recent_samples(tmp_path: Path) -> None:
    footprints = Footprints(tmp_path / "f.json")
    for sample in (100, 900_000, 110, 105):  # one disturbed sample
        footprints.record("m:1", sample)
    assert footprints.bytes["m:1"] == 107 and Footprints(tmp_path / "f.json").samples["m:1"] == [100, 900_000, 110, 105]


def test_footprints_persist_and_a_broken_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "footprints.json"
    Footprints(path).record("m:1", 3 * GIB)
    again = Footprints(path)
    assert again.gb("m:1") == 3 and again.gb("other") is None
    path.write_text("{not json")
    assert Footprints(path).bytes == {}


def test_private_bytes_of_this_process() -> None:
    assert (private_bytes(os.getpid()) or 0) > 1024 * 1024
    assert private_bytes(2**22 + 12345) is None  # no such process


def test_routing_uses_the_larger_figure_and_says_which() -> None:
    registry = build_registry([{"name": "a", "task": "chat", "min_ram_gb": 2}, {"name": "b", "task": "chat",
                                                                             "min_ram_gb": 1}])
    route = choose(registry, model=None, task="chat", default_task="chat", budget_gb=4, measured={"a": 6, "b": 0.5})
    a, b = route.verdicts
    assert route.model.name == "b"
    assert a.ram_source == "measured" and a.ram_gb == 6 and "needs measured 6 GiB > 4 GiB budget" in a.reason
    assert b.ram_source == "registry" and b.ram_gb == 1  # measured smaller: the registry's margin stays
