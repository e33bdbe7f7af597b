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
_LONGEST_WORD = 48  # a "word" longer than this (a path, a URL) may still fold


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
          right: Sequence[str] = (), spare: Sequence[str] = ()) -> None:
    """A table on a terminal; tab-separated lines with a header in a pipe (a title only on a terminal). On a
    terminal too narrow for every column, the ``spare`` ones go first (in that order), then others from the right."""
    rows = list(rows)
    if not stdout_is_terminal():
        lines = ["\t".join(columns)]
        lines += ["\t".join(_plain(cell) for cell in row) for row in rows]
        sys.stdout.write("\n".join(lines) + "\n")
        return
    console = _console(sys.stdout)
    cells = [[cell if isinstance(cell, Text) else Text(cell) for cell in row] for row in rows]
    texts = [[name, *(row[i].plain for row in cells if i < len(row))] for i, name in enumerate(columns)]
    # a column is never narrower than its longest word, so a name is never cut in two (`phi-4-mi|ni`) and prose
    # wraps at spaces; columns that do not fit the terminal even so are left out, and said
    shortest = [min(max((len(w) for text in column for w in text.split()), default=1), _LONGEST_WORD)
                for column in texts]
    natural = [max(shortest[i], *(len(line) for text in column for line in text.split("\n")))
               for i, column in enumerate(texts)]
    order = [columns.index(name) for name in spare if name in columns] + \
        [i for i in reversed(range(1, len(columns))) if columns[i] not in spare]
    kept = list(range(len(columns)))
    while order and sum(shortest[i] for i in kept) + 3 * len(kept) + 1 > console.width:
        kept.remove(order.pop(0))
    widths = {i: natural[i] for i in kept}
    room = console.width - 3 * len(kept) - 1
    while sum(widths.values()) > room:  # narrow the column with the most room to give, down to its longest word
        i = max(kept, key=lambda k: widths[k] - shortest[k])
        if widths[i] <= shortest[i]:
            break
        widths[i] -= 1
    shown = Table(title=title, title_justify="left")
    for i in kept:
        shown.add_column(columns[i], justify="right" if columns[i] in right else "left", overflow="fold",
                         width=widths[i])
    for row in cells:
        shown.add_row(*(row[i] for i in kept if i < len(row)))
    console.print(shown)
    left_out = [columns[i] for i in range(len(columns)) if i not in kept]
    if left_out:
        note(styled(f"({', '.join(left_out)}: not shown at {console.width} columns; a wider terminal, or --json, "
                    "has them)", "dim"))


def _plain(cell: Cell) -> str:
    text = cell.plain if isinstance(cell, Text) else cell
    return text.replace("\t", " ").replace("\n", ", ")
