"""The model registry (``models.json``): which models exist, for which tasks, and what RAM they need.

The seed format ``[{"name", "task", "min_ram_gb", "notes"}]`` loads unchanged; the optional fields are
what a gateway needs on top (see README "Registry format"). Validation collects every problem and
names the file, the entry and the field, because a registry is edited by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from app.core.measured import Measured, parse_measured

DEFAULT_PRIORITY = 100
_VERSION_SUFFIX = re.compile(r":\d+$")
_VARIANT_SUFFIX = re.compile(r"-(generic|cuda|qnn|vitis|openvino|webgpu|trtrtx)-(cpu|gpu|npu)$", re.IGNORECASE)

FIELDS: dict[str, str] = {
    "name": "Name apps use (`model`) and the catalog alias for Foundry Local. Required, unique.",
    "task": "Task or list of tasks the model serves (`chat`, `code`, …). Required.",
    "min_ram_gb": "GiB of RAM the model needs. Required, number ≥ 0.",
    "notes": "Free text shown in listings.",
    "aliases": "Other names apps may use for this model.",
    "upstream_id": "Exact upstream id (`tiny-chat-generic-cpu:1`); default: resolved from the upstream's list.",
    "priority": f"Lower is preferred within a task; ties keep registry order. Default {DEFAULT_PRIORITY}.",
    "context_length": "Context window in tokens; caps the default `max_tokens`.",
    "default_max_tokens": "`max_tokens` added to requests that have none (default: the setting).",
    "max_concurrency": "Requests in flight on this model (default: the setting).",
    "path": "Local ONNX Runtime GenAI model folder to register with Foundry Local (relative to this file).",
    "capabilities": "What the model can do: chat, tools, embeddings, transcription, vision, json_schema. "
    "Default from its task (embeddings → embeddings, transcription → transcription, vision → chat + vision, "
    "anything else → chat).",
    "parse_tool_calls": "Turn `<tool_call>{…}</tool_call>` text the model emits into OpenAI `tool_calls` "
    "(Foundry Local streams them as text, its issue #874). Default false.",
    "pinned": "Never unloaded by the gateway (LRU eviction to make room, the idle unload). Default false.",
    "cost_per_1k_input_tokens": "Price of 1,000 prompt tokens, for charge-back in usage (`GET /v1/usage`); any "
    "currency, the same one across the registry. Number ≥ 0.",
    "cost_per_1k_output_tokens": "Price of 1,000 generated tokens (as above).",
    "cost_per_runtime_second": "Price of one second of the runtime's time a request held (queue excluded): local "
    "models cost compute, not tokens (as above).",
    "measured": "What the team's benchmark found (latency, TTFT, tokens/s, RAM, ratings): written by "
    "`bench --update-registry` or `registry annotate`; used by GATEWAY_RANK_BY and X-Latency-Budget-Ms.",
}

CAPABILITIES = ("chat", "tools", "embeddings", "transcription", "vision", "json_schema")
_TASK_CAPABILITIES = {"embeddings": ("embeddings",), "transcription": ("transcription",), "vision": ("chat", "vision")}


def default_capabilities(tasks: tuple[str, ...]) -> tuple[str, ...]:
    """What a model can do when its entry does not say: from its tasks."""
    out: list[str] = []
    for task in tasks:
        for capability in _TASK_CAPABILITIES.get(task, ("chat",)):
            if capability not in out:
                out.append(capability)
    return tuple(out)


class RegistryError(ValueError):
    """A registry that cannot be used; ``problems`` holds one precise line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Prices:
    """What a model's use costs (models.json ``cost_per_*``): for charge-back, in the registry's one currency."""

    per_1k_input_tokens: float = 0.0
    per_1k_output_tokens: float = 0.0
    per_runtime_second: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int, runtime_seconds: float) -> float:
        return (input_tokens * self.per_1k_input_tokens + output_tokens * self.per_1k_output_tokens) / 1000 \
            + runtime_seconds * self.per_runtime_second

    def to_dict(self) -> dict[str, float]:
        return {f"cost_{name}": value for name, value in (
            ("per_1k_input_tokens", self.per_1k_input_tokens), ("per_1k_output_tokens", self.per_1k_output_tokens),
            ("per_runtime_second", self.per_runtime_second)) if value}


PRICE_FIELDS = ("cost_per_1k_input_tokens", "cost_per_1k_output_tokens", "cost_per_runtime_second")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    tasks: tuple[str, ...]
    min_ram_gb: float
    index: int
    notes: str = ""
    aliases: tuple[str, ...] = ()
    upstream_id: str | None = None
    priority: int = DEFAULT_PRIORITY
    context_length: int | None = None
    default_max_tokens: int | None = None
    max_concurrency: int | None = None
    path: Path | None = None
    capabilities: tuple[str, ...] = ("chat",)
    parse_tool_calls: bool = False
    pinned: bool = False
    measured: Measured | None = None
    prices: Prices | None = None

    @property
    def task(self) -> str:
        return self.tasks[0]

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that pins this model: name, aliases and the upstream id."""
        extra = (self.upstream_id,) if self.upstream_id else ()
        return (self.name, *self.aliases, *extra)

    def max_tokens_default(self, fallback: int) -> int:
        value = self.default_max_tokens or fallback
        if self.context_length:
            value = min(value, self.context_length)
        return value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "task": self.tasks[0] if len(self.tasks) == 1 else list(self.tasks),
            "min_ram_gb": self.min_ram_gb,
        }
        if self.notes:
            out["notes"] = self.notes
        for key in ("upstream_id", "context_length", "default_max_tokens", "max_concurrency"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.aliases:
            out["aliases"] = list(self.aliases)
        if self.priority != DEFAULT_PRIORITY:
            out["priority"] = self.priority
        if self.path is not None:
            out["path"] = str(self.path)
        if self.capabilities != default_capabilities(self.tasks):
            out["capabilities"] = list(self.capabilities)
        for key in ("parse_tool_calls", "pinned"):
            if getattr(self, key):
                out[key] = True
        if self.prices is not None:
            out.update(self.prices.to_dict())
        if self.measured is not None:
            out["measured"] = self.measured.raw
        return out


def alias_of(upstream_id: str) -> str:
    """Foundry Local's alias for an id: ``Phi-4-mini-generic-cpu:1`` → ``phi-4-mini``."""
    return _VARIANT_SUFFIX.sub("", _VERSION_SUFFIX.sub("", upstream_id)).lower()


@dataclass(frozen=True)
class Registry:
    """A validated registry with precomputed lookups (it is read on every request)."""

    entries: tuple[ModelEntry, ...]
    source: str = "models.json"
    _by_name: dict[str, ModelEntry] = field(default_factory=dict, repr=False)
    _by_task: dict[str, tuple[ModelEntry, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for entry in self.entries:
            for name in entry.names:
                self._by_name.setdefault(name.lower(), entry)
        tasks: dict[str, list[ModelEntry]] = {}
        for entry in self.entries:
            for task in entry.tasks:
                tasks.setdefault(task, []).append(entry)
        for task, items in tasks.items():
            self._by_task[task] = tuple(sorted(items, key=lambda e: (e.priority, e.index)))

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self._by_task)

    def lookup(self, name: str) -> ModelEntry | None:
        """The entry a name pins: its name, an alias, its upstream id or that id's alias."""
        key = name.lower()
        entry = self._by_name.get(key)
        if entry is None and ":" in key:
            entry = self._by_name.get(alias_of(key))
        return entry

    def for_task(self, task: str) -> tuple[ModelEntry, ...]:
        """Entries serving ``task`` in preference order (priority, then registry order)."""
        return self._by_task.get(task, ())


# --- loading and validation ----------------------------------------------------------------------


def load_registry(path: Path | str) -> Registry:
    path = Path(path)
    label = path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RegistryError([f"{label}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_registry(raw, label=label, base_dir=path.parent)


def parse_registry(raw: bytes | str, *, label: str = "models.json", base_dir: Path | None = None) -> Registry:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RegistryError([f"{label}: not valid JSON: {exc}"]) from exc
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        data = data["models"]
    if not isinstance(data, list):
        raise RegistryError([f"{label}: must be a JSON list of model entries"])
    return build_registry(data, label=label, base_dir=base_dir)


def build_registry(items: Iterable[Any], *, label: str = "models.json", base_dir: Path | None = None) -> Registry:
    problems: list[str] = []
    entries: list[ModelEntry] = []
    seen: dict[str, int] = {}
    for position, item in enumerate(items, start=1):
        entry = _validate_entry(item, position, label, base_dir, problems)
        if entry is None:
            continue
        for name in entry.names:
            other = seen.get(name.lower())
            if other is not None and other != position:
                problems.append(
                    f'{label}: entry {position} ("{entry.name}"): name "{name}" is already used by entry {other}'
                )
            seen.setdefault(name.lower(), position)
        entries.append(entry)
    if not entries and not problems:
        problems.append(f"{label}: has no model entries")
    if problems:
        raise RegistryError(problems)
    return Registry(tuple(entries), source=label)


def _validate_entry(
    item: Any, position: int, label: str, base_dir: Path | None, problems: list[str]
) -> ModelEntry | None:
    if not isinstance(item, dict):
        problems.append(f"{label}: entry {position}: must be an object")
        return None
    raw_name = item.get("name")
    shown = f'"{raw_name}"' if isinstance(raw_name, str) else "?"
    where = f"{label}: entry {position} ({shown})"
    before = len(problems)

    def bad(field_name: str, why: str) -> None:
        problems.append(f"{where}: {field_name} {why}")

    for key in item:
        if key not in FIELDS and not key.startswith(("_", "x-")):
            bad(key, f"is not a known field (known: {', '.join(FIELDS)})")

    name = raw_name.strip() if isinstance(raw_name, str) else ""
    if not name:
        bad("name", "is required and must be a non-empty string")

    tasks: tuple[str, ...] = ()
    raw_task = item.get("task")
    if isinstance(raw_task, str) and raw_task.strip():
        tasks = (raw_task.strip(),)
    elif isinstance(raw_task, list) and raw_task and all(isinstance(t, str) and t.strip() for t in raw_task):
        tasks = tuple(dict.fromkeys(t.strip() for t in raw_task))
    else:
        bad("task", "is required: a non-empty string or list of strings")

    ram = item.get("min_ram_gb")
    if isinstance(ram, bool) or not isinstance(ram, int | float) or not math.isfinite(ram) or ram < 0:
        bad("min_ram_gb", "must be a number ≥ 0")
        ram = 0.0

    def optional(key: str, kind: type | tuple[type, ...], rule: str, ok: Any = lambda v: True) -> Any:
        value = item.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
            bad(key, rule)
            return None
        return value

    notes = optional("notes", str, "must be a string") or ""
    upstream_id = optional("upstream_id", str, "must be a non-empty string", lambda v: bool(v.strip()))
    priority = optional("priority", int, "must be an integer")
    context_length = optional("context_length", int, "must be an integer ≥ 1", lambda v: v >= 1)
    default_max = optional("default_max_tokens", int, "must be an integer ≥ 1", lambda v: v >= 1)
    concurrency = optional("max_concurrency", int, "must be an integer ≥ 1", lambda v: v >= 1)
    raw_path = optional("path", str, "must be a non-empty string", lambda v: bool(v.strip()))
    aliases = optional(
        "aliases", list, "must be a list of non-empty strings",
        lambda v: all(isinstance(a, str) and a.strip() for a in v),
    ) or []
    capabilities = optional(
        "capabilities", list, f"must be a list of: {', '.join(CAPABILITIES)}",
        lambda v: bool(v) and all(c in CAPABILITIES for c in v),
    )
    measured_problems: list[str] = []
    measured = parse_measured(item.get("measured"), measured_problems)
    for problem in measured_problems:
        bad("measured", problem)
    switches = {key: item.get(key, False) for key in ("parse_tool_calls", "pinned")}
    for key, value in switches.items():
        if not isinstance(value, bool):
            bad(key, "must be true or false")

    price_values = [optional(key, (int, float), "must be a number ≥ 0", lambda v: math.isfinite(v) and v >= 0)
                     for key in PRICE_FIELDS]
    prices = Prices(*(float(v or 0) for v in price_values)) if any(v is not None for v in price_values) else None

    path: Path | None = None
    if raw_path:
        path = Path(raw_path)
        if not path.is_absolute() and base_dir is not None:
            path = (base_dir / path).resolve()
    if len(problems) > before:
        return None
    return ModelEntry(
        name=name,
        tasks=tasks,
        min_ram_gb=float(ram),
        index=position - 1,
        notes=notes,
        aliases=tuple(a.strip() for a in aliases),
        upstream_id=upstream_id.strip() if upstream_id else None,
        priority=DEFAULT_PRIORITY if priority is None else priority,
        context_length=context_length,
        default_max_tokens=default_max,
        max_concurrency=concurrency,
        path=path,
        capabilities=tuple(dict.fromkeys(capabilities)) if capabilities else default_capabilities(tasks),
        parse_tool_calls=bool(switches["parse_tool_calls"]),
        pinned=bool(switches["pinned"]),
        measured=measured,
        prices=prices,
    )
