"""Docs that are generated or referenced stay in step with the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts/update-readme-settings.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "README.md").read_text()
    assert module.render(text) == text, "run: .venv/bin/python scripts/update-readme-settings.py"


def test_readme_names_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text
    assert "make test" in (ROOT / ".ci/run").read_text()
