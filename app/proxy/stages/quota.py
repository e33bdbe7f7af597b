"""The quota stage: a request admitted within its key's quotas (requests, tokens, concurrency) before it may
generate; what it spends is charged after its end (``app.proxy.observers.charge``)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.access.control import Access
from app.core.registry import ModelEntry
from app.core.tokens import estimate
from app.openai import Endpoint
from app.proxy.exchange import Exchange


class Quota:
    __slots__ = ("access", "default_max_tokens")

    def __init__(self, access: Access, default_max_tokens: int) -> None:
        self.access = access
        self.default_max_tokens = default_max_tokens

    async def admit(self, ex: Exchange, endpoint: Endpoint, body: dict[str, Any],
                    entry: ModelEntry) -> list[tuple[bytes, bytes]]:
        """Admitted (or a 429 saying which limit): the key's ``x-ratelimit-*`` headers; none without a key."""
        key = ex.call.key
        if key is None:
            return []
        ex.metered = key.limited  # before the await: a request cancelled mid-admission frees its slot
        tokens = await self.reservation(endpoint, body, entry) if key.counts_tokens else 0
        return await self.access.admit(key, ex.call.slot, tokens)

    async def reservation(self, endpoint: Endpoint, body: dict[str, Any], entry: ModelEntry) -> int:
        """The tokens a request may spend, reserved against its key's token quota at admission: its prompt
        (counted with the model's tokenizer where the gateway has it, in a thread; else ~4 bytes a token) and its
        output budget (as asked, else the model's default) for each answer it asks for (``n``)."""
        texts = endpoint.prompt_texts(body)
        if entry.path is not None and (entry.path / "tokenizer.json").is_file():
            prompt = await asyncio.to_thread(estimate, entry.path, texts)
        else:
            prompt = estimate(None, texts)
        budget = endpoint.output_budget(body)
        if budget is None:
            budget = entry.max_tokens_default(self.default_max_tokens)
        return prompt + budget * endpoint.choices(body)
