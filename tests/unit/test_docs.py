"""Docs that are generated or referenced stay in step with the code."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_settings_table_and_module_map_are_current() -> None:
    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts/update-docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for page in ("settings.md", "architecture.md"):
        text = (ROOT / "docs" / page).read_text()
        assert module.render(text) == text, "run: .venv/bin/python scripts/update-docs.py"
    assert "<!-- module-map:start -->\n```\napp/" in (ROOT / "docs" / "architecture.md").read_text()
    assert "<!-- settings-table:start -->\n| variable" in (ROOT / "docs" / "settings.md").read_text()


def test_docs_link_only_to_files_in_the_repository() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            resolved = (doc.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{doc.name} links to {target}, outside the repository"
            assert resolved.exists(), f"{doc.name} links to {target}, which is not in the repository"


# paths a doc names as an example of the user's own (a model folder they make, the env file they copy)
EXAMPLES = {"models/my-coder", "models/my-model", "models/NAME", "config/gateway.env", "config/keys.yaml"}


def test_every_repository_path_the_docs_cite_exists() -> None:
    """Issue 32, item 12: ~22 paths in the README and docs/ pointed at files that had moved."""
    import glob

    cited = re.compile(r"(?<![\w./-])((?:app|tests|scripts|config|docs|deploy|models|\.ci)/"
                       r"[A-Za-z0-9_./*-]*[A-Za-z0-9_*/-])")
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text().splitlines(), start=1):
            for path in cited.findall(line):
                path = path.split("::")[0].rstrip("/.")
                if path in EXAMPLES or (glob.glob(str(ROOT / path)) if "*" in path else (ROOT / path).exists()):
                    continue
                missing.append(f"{doc.name}:{number}: {path}")
    assert not missing, missing


def test_the_readme_is_one_sitting_with_a_contents_list() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 500
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"(?m)^## (.+)$", text.split("## Contents", 1)[1])
    for heading in headings:
        assert f"[{heading}]" in contents, f"the contents list lacks '{heading}'"


def test_readme_names_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_make_run_installs_only_what_running_needs(tmp_path: Path) -> None:
    """Issue 32, item 11: `make run` built a 1.1 GB venv with the test and bench tools."""
    import subprocess

    planned = subprocess.run(["make", "-n", "-B", "run", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    installs = [line for line in planned.stdout.splitlines() if "pip install" in line and "-e" in line]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install -q -e '.[foundry,otel]'"]


def test_the_readmes_command_list_is_the_real_one() -> None:
    """Issue 32, item 12: the README's `--help` listing lacked `batches`."""
    from app.cli.main import GROUPS, build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    listing = (ROOT / "README.md").read_text().split("$ foundry-gateway --help", 1)[1].split("```", 1)[0]
    for action in commands._choices_actions:
        assert f"    {action.dest:<9} {action.help}" in listing, action.dest
    assert GROUPS


def test_troubleshooting_covers_the_first_failures_with_the_gateways_own_words() -> None:
    """Issue 32, item 13: each entry quotes what the gateway says; the codes it quotes are the code's."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    for topic in ("port is taken", "runtime is not found", "not on the runtime", "64 tokens", "401 with keys",
                  "Redis is down", "disk is full"):
        assert topic in text, topic
    source = "\n".join(p.read_text() for p in (ROOT / "app").rglob("*.py"))
    for code in re.findall(r'"code": "([a-z_]+)"', text):
        assert f'"{code}"' in source, code
    assert "is taken (another gateway, or another program, listens there)" in source


OS_WORDS = {"Connection refused"}  # the operating system's, inside a gateway message


def test_the_messages_troubleshooting_quotes_are_the_gateways() -> None:
    """Review of issue 32: a quoted message had been paraphrased. Each one quoted is the source's words:
    every literal run between its values (quoted names, numbers, parentheses, clauses after a colon) is in it."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    source = " ".join("\n".join(p.read_text() for p in (ROOT / "app").rglob("*.py")).split())
    source = re.sub(r'" f?"', "", source).replace('\\"', '"')  # implicit concatenation, escaped quotes
    messages = re.findall(r'"message": "((?:[^"\\]|\\.)*)"', text)
    names = sorted((e["name"] for e in json.loads((ROOT / "models.json").read_text())), key=len, reverse=True)
    assert len(messages) >= 6
    for message in messages:
        message = message.replace('\\"', '"')
        for name in names:
            message = message.replace(name, "'name'")
        values = r"'[^']*'|`[^`]*`|\([^)]*\)|\[[^]]*\]|\d+(?:\.\d+)?(?: ?[GM]iB)?|…|: "
        runs = [run.strip() for run in re.split(values, message)]
        paraphrased = [run for run in runs if len(run) >= 12 and run not in source and run not in OS_WORDS]
        assert not paraphrased and any(len(run) >= 12 for run in runs), (message, paraphrased)
