"""Counting tokens where the upstream reports none: Foundry Local's embeddings answer ``usage`` with 0, yet
token usage is what metrics and quotas count. A local model folder has its ``tokenizer.json``; the
``tokenizers`` library counts with it exactly as the runtime tokenizes (catalog models without a local
folder are left as the runtime says). Callers run it in a thread: ~0.8 s per MB of text on 2 cores."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=16)
def _tokenizer(path: str) -> Any:
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(path)
    except Exception:  # not installed, or a file it cannot read: no count rather than a failed request
        return None


def counter(model_dir: Path | None) -> Callable[[list[str]], int | None]:
    """A function counting the tokens of texts for the model in ``model_dir`` (None when it cannot)."""

    def count(texts: list[str]) -> int | None:
        if model_dir is None or not (model_dir / "tokenizer.json").is_file():
            return None
        tokenizer = _tokenizer(str(model_dir / "tokenizer.json"))
        if tokenizer is None:
            return None
        try:
            return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts))
        except Exception:  # the count is for metrics: never a failed request
            return None

    return count


def estimate(model_dir: Path | None, texts: list[str]) -> int:
    """Tokens in ``texts``: counted with the model's own tokenizer where the gateway has it, else about four
    bytes a token (what OpenAI's own rule of thumb says). Blocking: callers run it in a thread."""
    counted = counter(model_dir)(texts) if texts else 0
    if counted is not None:
        return counted
    return math.ceil(sum(len(text.encode("utf-8", "replace")) for text in texts) / 4)
