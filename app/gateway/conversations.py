"""Stored responses: the Responses API's conversation state, owned by the gateway, not the runtime.

A stored response is the response object as its client got it and the input it answered (the whole conversation
before it included), kept in the state store (``app.state``: a SQLite file on one host, Redis behind a fleet) for
``GATEWAY_RESPONSES_TTL`` seconds, within ``GATEWAY_RESPONSES_MAX_BYTES`` (the oldest go first). Each belongs to
the key that made it: a team key reads and deletes only its own (another key's id is a 404, like an unknown one);
callers without a team key share one space; the admin key reads all. A front keeps the state of its clients; its
nodes are asked with ``store: false`` and keep none.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from app.access.middleware import Caller
from app.core.settings import Settings
from app.state import StateStore

log = logging.getLogger("foundry_gateway.responses")
SPACE = "responses"
JSON = dict[str, Any]
_TRIM_EVERY = 50  # stores between trims to the size bound


def owner_of(caller: Caller) -> str:
    """The space a caller's stored responses live in: its team key's name, or the shared one."""
    return caller.key.name if caller.key is not None else ""


class Conversations:
    def __init__(self, store: StateStore, settings: Settings) -> None:
        self.store = store
        self.ttl = settings.responses_ttl
        self.max_bytes = settings.responses_max_bytes
        self._kept = 0

    def memory(self, caller: Caller) -> Memory:
        """What the Responses endpoint recalls from and keeps to, in this caller's space."""
        return Memory(self, caller)

    async def get(self, response_id: str, caller: Caller) -> JSON | None:
        record = await self.store.get(SPACE, response_id)
        if record is None or not (caller.admin or record.owner == owner_of(caller)):
            return None
        found: JSON = orjson.loads(record.value)
        return found

    async def delete(self, response_id: str, caller: Caller) -> bool:
        return await self.get(response_id, caller) is not None and await self.store.delete(SPACE, response_id)

    async def keep(self, response_id: str, caller: Caller, record: JSON) -> None:
        await self.store.put(SPACE, response_id, orjson.dumps(record), owner=owner_of(caller), ttl=self.ttl)
        self._kept += 1
        if self._kept % _TRIM_EVERY == 1:
            removed = await self.store.trim(SPACE, self.max_bytes)
            if removed:
                log.info("stored responses over %d bytes: the oldest %d dropped", self.max_bytes, removed)


class Memory:
    """One caller's view of the stored responses (``app.openai.endpoint.Memory``)."""

    __slots__ = ("caller", "conversations")

    def __init__(self, conversations: Conversations, caller: Caller) -> None:
        self.conversations = conversations
        self.caller = caller

    async def recall(self, key: str) -> JSON | None:
        return await self.conversations.get(key, self.caller)

    async def keep(self, key: str, value: JSON) -> None:
        await self.conversations.keep(key, self.caller, value)
