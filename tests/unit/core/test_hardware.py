"""Host RAM: physical, capped by the cgroup (v1 and v2, own cgroup and ancestors), minus the reserve."""

from __future__ import annotations

from pathlib import Path

from app.core.hardware import GIB, HostMemory, cgroup_memory_limit


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_own_group_limit(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "self.cgroup"
    _tree(root, {"cgroup.controllers": "memory", "memory.max": "max", "app/web/memory.max": str(4 * GIB)})
    proc.write_text("0::/app/web\n")
    assert cgroup_memory_limit(root, proc) == 4 * GIB


def test_cgroup_v2_ancestor_is_tighter(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "self.cgroup"
    _tree(root, {"cgroup.controllers": "", "app/memory.max": str(2 * GIB), "app/web/memory.max": "max"})
    proc.write_text("0::/app/web\n")
    assert cgroup_memory_limit(root, proc) == 2 * GIB


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "self.cgroup"
    _tree(root, {"cgroup.controllers": "", "memory.max": "max"})
    proc.write_text("0::/\n")
    assert cgroup_memory_limit(root, proc) is None


def test_cgroup_v1_limit_and_unlimited_sentinel(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "self.cgroup"
    _tree(root, {"memory/memory.limit_in_bytes": "9223372036854771712",
                 "memory/docker/abc/memory.limit_in_bytes": str(3 * GIB)})
    proc.write_text("12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n")
    assert cgroup_memory_limit(root, proc) == 3 * GIB
    proc.write_text("11:memory:/\n")
    assert cgroup_memory_limit(root, proc) is None


def test_budget_uses_cgroup_cap_then_reserve() -> None:
    mem = HostMemory(physical_gb=24, cgroup_limit_gb=8, reserve_gb=1, override_gb=None)
    assert (mem.total_gb, mem.budget_gb, mem.source) == (8, 7, "cgroup")
    assert HostMemory(24, None, 1, None).budget_gb == 23
    assert HostMemory(24, 64, 1, None).source == "physical"


def test_override_wins_and_budget_never_negative() -> None:
    mem = HostMemory(physical_gb=24, cgroup_limit_gb=8, reserve_gb=2, override_gb=64)
    assert (mem.total_gb, mem.budget_gb, mem.source) == (64, 62, "setting")
    assert HostMemory(1, None, 4, None).budget_gb == 0
