from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.proxy.inprocess import Harness


@pytest.fixture()
def harness(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Harness:
    """The gateway's ASGI app built in this process, over a scripted upstream (``tests.unit.proxy.inprocess``)."""
    return Harness(monkeypatch, tmp_path)
