"""How much RAM models may use on this host.

``psutil`` reports the machine's RAM, but in a container the cgroup memory limit is what the kernel
enforces, so the budget is ``min(physical, cgroup limit) - reserve`` unless a setting overrides it
(a gateway running on another host than its upstream). GiB throughout, like ``select_model.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

GIB = 1024**3
# cgroup v1 reports "no limit" as a huge page-aligned number (PAGE_COUNTER_MAX * page size).
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True, slots=True)
class HostMemory:
    physical_gb: float
    cgroup_limit_gb: float | None
    reserve_gb: float
    override_gb: float | None

    @property
    def total_gb(self) -> float:
        """What the host really offers: the override, else physical RAM capped by the cgroup."""
        if self.override_gb is not None:
            return self.override_gb
        if self.cgroup_limit_gb is not None:
            return min(self.physical_gb, self.cgroup_limit_gb)
        return self.physical_gb

    @property
    def budget_gb(self) -> float:
        """RAM models may use: the total minus the reserve."""
        return max(0.0, self.total_gb - self.reserve_gb)

    @property
    def source(self) -> str:
        if self.override_gb is not None:
            return "setting"
        if self.cgroup_limit_gb is not None and self.cgroup_limit_gb < self.physical_gb:
            return "cgroup"
        return "physical"

    def describe(self) -> str:
        return f"{self.budget_gb:.1f} GiB budget ({self.total_gb:.1f} GiB {self.source} - {self.reserve_gb:g} reserve)"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _V1_UNLIMITED else value


def _own_cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path for v2 (``0::/x``) and for v1's memory controller."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def cgroup_memory_limit(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The tightest memory limit (bytes) on this process's cgroup and its ancestors, or None.

    Works for cgroup v2 (``memory.max``) and v1 (``memory/memory.limit_in_bytes``); inside a container
    the namespace root is the container's own cgroup, so ``root`` itself is checked too.
    """
    v2_path, v1_path = _own_cgroup_paths(proc_cgroup)
    limits: list[int] = []
    if (root / "cgroup.controllers").exists() or v2_path is not None:
        for directory in _ancestors(root, v2_path):
            value = _read_int(directory / "memory.max")
            if value is not None:
                limits.append(value)
    v1_root = root / "memory"
    if v1_root.is_dir():
        for directory in _ancestors(v1_root, v1_path):
            value = _read_int(directory / "memory.limit_in_bytes")
            if value is not None:
                limits.append(value)
    return min(limits) if limits else None


def _ancestors(root: Path, rel: str | None) -> list[Path]:
    dirs = [root]
    if rel:
        current = root
        for part in Path(rel.lstrip("/")).parts:
            current = current / part
            if current.is_dir():
                dirs.append(current)
    return dirs


def host_memory(override_gb: float | None = None, reserve_gb: float = 1.0) -> HostMemory:
    limit = cgroup_memory_limit()
    return HostMemory(
        physical_gb=psutil.virtual_memory().total / GIB,
        cgroup_limit_gb=None if limit is None else limit / GIB,
        reserve_gb=reserve_gb,
        override_gb=override_gb,
    )
