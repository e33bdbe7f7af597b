"""The gateway's log lines: one per record, whatever the terminal or the pipe."""

from __future__ import annotations

import logging


class SingleLineFormatter(logging.Formatter):
    """Every record on one line: newlines in messages and tracebacks are written as ``\\n``, so log shippers
    and ``grep`` see one event per line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(SingleLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream call otherwise
