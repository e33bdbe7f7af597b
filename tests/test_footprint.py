"""Measured RAM (app.footprint): the meter counts a load only when nothing else changed meanwhile; measured
sizes persist across restarts; routing uses max(min_ram_gb, measured) and says which figure it used."""

from __future__ import annotations

import os
from pathlib import Path

from app.footprint import GIB, Footprints, LoadMeter, private_bytes
from app.registry import build_registry
from app.routing import choose


class Reader:
    """Memory that grows as the test says."""

    def __init__(self) -> None:
        self.value = 100

    def __call__(self) -> int:
        return self.value


def test_a_lone_load_is_measured() -> None:
    reader = Reader()
    meter = LoadMeter(reader)
    token = meter.begin()
    reader.value += 50
    assert meter.end(token) == 50


def test_overlapping_changes_measure_nothing() -> None:
    reader = Reader()
    meter = LoadMeter(reader)
    first = meter.begin()
    second = meter.begin()  # another load (or an unload) while the first runs
    reader.value += 80
    assert meter.end(second) is None and meter.end(first) is None
    third = meter.begin()  # alone again: measured
    reader.value += 5
    assert meter.end(third) == 5


def test_shrinking_counts_as_zero_and_unknown_as_nothing() -> None:
    reader = Reader()
    meter = LoadMeter(reader)
    token = meter.begin()
    reader.value -= 30
    assert meter.end(token) == 0
    assert LoadMeter(lambda: None).end(LoadMeter(lambda: None).begin()) is None


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
