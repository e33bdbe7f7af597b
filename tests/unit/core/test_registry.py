"""Registry loading and validation: the seed format loads unchanged; every error names file, entry, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.registry import RegistryError, alias_of, load_registry, parse_registry

SEED = [
    {"name": "phi-4-mini", "task": "chat", "min_ram_gb": 8, "notes": "small"},
    {"name": "qwen2.5-7b-instruct", "task": "chat", "min_ram_gb": 16, "notes": "bigger"},
    {"name": "deepseek-r1-distill-qwen-7b", "task": "code", "min_ram_gb": 16, "notes": "code"},
]


def test_seed_format_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(SEED))
    registry = load_registry(path)
    assert [e.name for e in registry] == [s["name"] for s in SEED]
    assert registry.tasks == ("chat", "code")
    assert registry.for_task("chat")[0].name == "phi-4-mini"
    assert registry.lookup("PHI-4-MINI") is registry.entries[0]


def test_project_registry_is_valid() -> None:
    registry = load_registry(Path(__file__).resolve().parents[3] / "models.json")
    tiny = registry.lookup("tiny-chat")
    assert tiny is not None and set(tiny.tasks) == {"chat", "code"}
    assert tiny.path is not None and tiny.path.is_dir()
    assert registry.lookup("tiny-chat-generic-cpu:1") is tiny


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "qwen", "task": "chat", "min_ram_gb": -1},
         'models.json: entry 2 ("qwen"): min_ram_gb must be a number ≥ 0'),
        ({"name": "qwen", "task": "chat", "min_ram_gb": "8"}, 'entry 2 ("qwen"): min_ram_gb must be a number ≥ 0'),
        ({"name": "qwen", "task": "chat", "min_ram_gb": True}, 'entry 2 ("qwen"): min_ram_gb must be a number ≥ 0'),
        ({"name": "qwen", "min_ram_gb": 1}, 'entry 2 ("qwen"): task is required'),
        ({"task": "chat", "min_ram_gb": 1}, "entry 2 (?): name is required"),
        ({"name": "qwen", "task": "chat", "min_ram_gb": 1, "min_ram": 3},
         'entry 2 ("qwen"): min_ram is not a known field'),
        ({"name": "qwen", "task": "chat", "min_ram_gb": 1, "priority": "high"}, "priority must be an integer"),
        ({"name": "qwen", "task": "chat", "min_ram_gb": 1, "aliases": [""]}, "aliases must be a list"),
        ({"name": "phi-4-mini", "task": "chat", "min_ram_gb": 1},
         'entry 2 ("phi-4-mini"): name "phi-4-mini" is already used by entry 1'),
        ("nope", "models.json: entry 2: must be an object"),
    ],
)
def test_validation_names_file_entry_and_field(entry: object, message: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_registry(json.dumps([SEED[0], entry]))
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_alias_clash_with_other_entry_is_an_error() -> None:
    items = [SEED[0], {"name": "other", "task": "chat", "min_ram_gb": 1, "aliases": ["phi-4-mini"]}]
    with pytest.raises(RegistryError, match="already used by entry 1"):
        parse_registry(json.dumps(items))


def test_every_problem_is_reported_at_once() -> None:
    items = [{"name": "a", "task": "chat", "min_ram_gb": -1}, {"name": "b", "task": 3, "min_ram_gb": 1}]
    with pytest.raises(RegistryError) as info:
        parse_registry(json.dumps(items))
    assert len(info.value.problems) == 2


def test_not_json_and_not_a_list(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"models\.json: not valid JSON"):
        parse_registry("[{")
    with pytest.raises(RegistryError, match="must be a JSON list"):
        parse_registry('{"a": 1}')
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "missing.json")


def test_priority_orders_within_task() -> None:
    items = [
        {"name": "a", "task": "chat", "min_ram_gb": 1},
        {"name": "b", "task": "chat", "min_ram_gb": 1, "priority": 1},
    ]
    assert [e.name for e in parse_registry(json.dumps(items)).for_task("chat")] == ["b", "a"]


@pytest.mark.parametrize(
    ("upstream_id", "alias"),
    [("tiny-chat-generic-cpu:1", "tiny-chat"), ("Phi-4-mini-instruct-cuda-gpu:2", "phi-4-mini-instruct"), ("x", "x")],
)
def test_alias_of(upstream_id: str, alias: str) -> None:
    assert alias_of(upstream_id) == alias
