"""Regenerate the settings table in README.md from app/settings.py (a test checks it is current)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.cli.main import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render(text: str) -> str:
    return re.sub(f"{START}.*?{END}", f"{START}\n{settings_table()}\n{END}", text, flags=re.S)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
