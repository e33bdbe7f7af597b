"""Spans of time as people type them on the command line: ``90s``, ``45m``, ``12h``, ``30d``, ``2w``."""

from __future__ import annotations

import argparse
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def span(text: str) -> float:
    """Seconds in ``text`` (an argparse ``type``: a bad one is argparse's one-line error)."""
    found = _SPAN.fullmatch(text.strip().lower())
    if found is None or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a span of time: a number and s, m, h, d or w (30d, 12h)")
    return float(found.group(1)) * _UNITS[found.group(2)]
