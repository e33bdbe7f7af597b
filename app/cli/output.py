"""How the CLI prints. On a terminal: tables and colour (rich). In a pipe or a file: plain tab-separated lines,
nothing wrapped or cut, so ``foundry-gateway models | cut -f1`` gives whole names. ``--json`` everywhere. Errors
are one line on stderr (``error: …``, exit 1), never a traceback for a user mistake. Nothing the user or a
gateway wrote is ever read as rich markup: every cell and message is plain text with a style beside it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text  # a Text carries a style; a str is shown as it is


class CliError(Exception):
    """A mistake or a failure the user can act on: printed as one line, exit 1."""


def _console(stream: Any) -> Console:
    tty = stream.isatty()
    # in a pipe nothing is wrapped at 80 columns (rich's default width without a terminal)
    return Console(file=stream, markup=False, highlight=False, emoji=False, soft_wrap=not tty,
                   width=None if tty else 1_000_000)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def styled(text: Any, style: str) -> Text:
    return Text(str(text), style=style)


def yes_no(value: bool | None) -> Text:
    return Text("?") if value is None else (styled("yes", "green") if value else styled("no", "red"))


def say(*parts: Cell, stream: Any = None) -> None:
    """A line of text on stdout (or ``stream``), parts joined by nothing."""
    _console(stream or sys.stdout).print(Text.assemble(*parts))


def note(*parts: Cell) -> None:
    """A line on stderr: progress and remarks that are not the command's result."""
    _console(sys.stderr).print(Text.assemble(*parts))


def error(message: str) -> None:
    _console(sys.stderr).print(Text.assemble(styled("error", "bold red"), ": ", message.replace("\n", "; ")))


def json_out(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def table(columns: Sequence[str], rows: Iterable[Sequence[Cell]], *, title: str | None = None,
          right: Sequence[str] = ()) -> None:
    """A table on a terminal; tab-separated lines with a header in a pipe (a title only on a terminal)."""
    rows = list(rows)
    if not stdout_is_terminal():
        lines = ["\t".join(columns)]
        lines += ["\t".join(_plain(cell) for cell in row) for row in rows]
        sys.stdout.write("\n".join(lines) + "\n")
        return
    shown = Table(title=title, title_justify="left")
    for name in columns:
        shown.add_column(name, justify="right" if name in right else "left", overflow="fold")
    for row in rows:
        shown.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    _console(sys.stdout).print(shown)


def _plain(cell: Cell) -> str:
    text = cell.plain if isinstance(cell, Text) else cell
    return text.replace("\t", " ").replace("\n", ", ")
