"""Regenerate the generated parts of the docs: the settings table in docs/settings.md (from app/core/settings.py)
and the module map in docs/architecture.md (from the package's own docstrings). tests/unit/test_docs.py checks both
are current.

Run: .venv/bin/python scripts/update-docs.py
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from app.cli.settings import settings_table  # noqa: E402

PAGES = (ROOT / "docs" / "settings.md", ROOT / "docs" / "architecture.md")
SETTINGS = ("<!-- settings-table:start -->", "<!-- settings-table:end -->")
MODULES = ("<!-- module-map:start -->", "<!-- module-map:end -->")
# the layers, top (imports the rest) to bottom (imports nothing of the app): as pyproject's import contract says
LAYERS = ("cli", "server", "curation", "batches", "proxy", "gateway", "access", "upstream", "openai", "policy", "state",
          "core")


def summary(path: Path) -> str:
    """A module's docstring, its first sentence, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split())
    match = re.search(r"(?<=\.)\s", text)
    first = (text[:match.start()] if match else text).replace("``", "`")
    return first if len(first) <= 96 else first[:first.rfind(" ", 0, 95)].rstrip(",;:(") + " …"


def module_map() -> str:
    lines = ["```", "app/"]
    for package in LAYERS:
        folder = ROOT / "app" / package
        lines.append(f"  {package + '/':<16}{summary(folder / '__init__.py')}")
        lines += _modules(folder, "    ")
        for sub in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file()):
            lines.append(f"    {sub.name + '/':<22}{summary(sub / '__init__.py')}")
            lines += _modules(sub, "      ")
    lines.append("```")
    return "\n".join(lines)


def _modules(folder: Path, indent: str) -> list[str]:
    return [f"{indent}{module.name:<{26 - len(indent)}}{summary(module)}" for module in sorted(folder.glob("*.py"))
            if module.name not in ("__init__.py", "__main__.py")]


def render(text: str) -> str:
    for (start, end), body in ((SETTINGS, settings_table()), (MODULES, module_map())):
        replacement = f"{start}\n{body}\n{end}"
        text = re.sub(f"{start}.*?{end}", lambda _, new=replacement: new, text, flags=re.S)
    return text


if __name__ == "__main__":
    for page in PAGES:
        page.write_text(render(page.read_text(encoding="utf-8")), encoding="utf-8")
