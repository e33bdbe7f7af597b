"""Stored responses: the Responses API's conversation state, owned by the gateway, not the runtime.

Each stored response is kept once, as its own turn: the input its request added, the response object as its client
got it, and the id of the response it continued (``previous_response_id``). A follow-up walks that chain back —
one read a turn — and sends the whole conversation upstream; the walk stops with a 400 as soon as the conversation
is larger than a request body may be (``GATEWAY_MAX_BODY_BYTES``), so a long chain never becomes an unbounded
upstream request, and storage grows with each turn's size, not with the conversation's. Keeping a turn extends the
life of the turns before it (``touch``), so a conversation lives ``GATEWAY_RESPONSES_TTL`` after its latest turn.

Each belongs to the key that made it: a team key reads and deletes only its own (another key's id is a 404, like an
unknown one); callers without a team key share one space; the admin key reads all. Each key's space has its own
bound — ``GATEWAY_RESPONSES_MAX_BYTES``, or the key's ``storage_bytes`` — past which that key's turns that would
expire soonest go — its least recently continued conversations, the oldest turns first — checked every ten of the
key's writes in each process; another key's are never touched. With no room on the state disk a request that asks
to be stored is refused (507) before it is generated. A front keeps the state of its clients; its nodes are asked with
``store: false`` and keep none.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from app.access.middleware import Caller
from app.core.errors import bad_request, insufficient_storage
from app.core.settings import Settings
from app.state import StateStore, StoreFull
from app.state.disk import DiskSpace

log = logging.getLogger("foundry_gateway.responses")
SPACE = "responses"
JSON = dict[str, Any]
_TRIM_EVERY = 10  # a key's stores between trims of its space to its bound


def owner_of(caller: Caller) -> str:
    """The space a caller's stored responses live in: its team key's name, or the shared one."""
    return caller.key.name if caller.key is not None else ""


class Conversations:
    def __init__(self, store: StateStore, settings: Settings, disk: DiskSpace) -> None:
        self.store = store
        self.ttl = settings.responses_ttl
        self.max_bytes = settings.responses_max_bytes
        self.disk = disk
        self._kept: dict[str, int] = {}  # per owner, since the last trim

    def for_caller(self, caller: Caller, limit: int) -> StoredResponses:
        """What the Responses endpoint recalls from and keeps to, in this caller's space; ``limit``: the most bytes
        a recalled conversation may have (the endpoint's body limit)."""
        return StoredResponses(self, caller, limit)

    def bound(self, caller: Caller) -> int:
        key = caller.key
        return key.storage_bytes if key is not None and key.storage_bytes else self.max_bytes

    async def get(self, response_id: str, caller: Caller) -> JSON | None:
        record = await self.store.get(SPACE, response_id)
        if record is None or not (caller.admin or record.owner == owner_of(caller)):
            return None
        found: JSON = orjson.loads(record.value)
        return found

    async def chain(self, response_id: str, caller: Caller, limit: int) -> tuple[list[JSON], list[str]] | None:
        """The conversation up to and including that response — every turn's input, then its output — and the ids
        of its turns; None: no such response of this caller's. A 400 past ``limit`` bytes, or when a turn it
        continues was deleted."""
        turns: list[JSON] = []
        ids: list[str] = []
        size = 0
        wanted: str | None = response_id
        while wanted is not None:
            found = await self.store.get(SPACE, wanted)
            if found is None or not (caller.admin or found.owner == owner_of(caller)):
                if not ids:
                    return None
                raise bad_request(f"Response '{ids[-1]}' continues '{wanted}', which was deleted or has expired: the "
                                  "conversation cannot be recalled.", param="previous_response_id",
                                  code="previous_response_not_found")
            size += len(found.value)
            if size > limit:
                raise bad_request(f"The conversation of '{response_id}' is larger than {limit} bytes, the most a "
                                  "request may send (GATEWAY_MAX_BODY_BYTES): start a new one, or send its recent "
                                  "turns as input.", param="previous_response_id", code="conversation_too_large")
            turn: JSON = orjson.loads(found.value)
            turns.append(turn)
            ids.append(wanted)
            wanted = turn.get("previous")  # a record of an earlier version has none: its input holds the history
        items: list[JSON] = []
        for turn in reversed(turns):
            items += [*turn["input"], *turn["response"].get("output", ())]
        return items, ids

    async def input_items(self, response_id: str, caller: Caller, limit: int) -> list[JSON] | None:
        """The input a response answered: the conversation before it, then its own input."""
        record = await self.get(response_id, caller)
        if record is None:
            return None
        previous = record.get("previous")
        before = await self.chain(previous, caller, limit) if previous else None
        return [*(before[0] if before else ()), *record["input"]]

    async def delete(self, response_id: str, caller: Caller) -> bool:
        return await self.get(response_id, caller) is not None and await self.store.delete(SPACE, response_id)

    def check_room(self) -> None:
        """A 507 now, before generating, if an answer could not be stored."""
        if self.disk.full:
            raise insufficient_storage("the response (send \"store\": false to have it answered unstored)")

    async def keep(self, response_id: str, caller: Caller, record: JSON, earlier: list[str]) -> None:
        owner = owner_of(caller)
        try:  # the earlier turns first: the newest is the last of its conversation a trim would take
            await self.store.touch(SPACE, earlier, self.ttl)
            await self.store.put(SPACE, response_id, orjson.dumps(record), owner=owner, ttl=self.ttl)
        except StoreFull:
            self.disk.ran_out()
            raise
        kept = self._kept[owner] = self._kept.get(owner, 0) + 1
        if kept >= _TRIM_EVERY:
            self._kept[owner] = 0
            bound = self.bound(caller)
            removed = await self.store.trim(SPACE, bound, owner=owner)
            if removed:
                log.info("stored responses of %s over %d bytes: %d of its own dropped", owner or "(no key)", bound,
                         removed)


class StoredResponses:
    """One caller's view of the stored responses (``app.openai.endpoint.StoredResponses``), for one request."""

    __slots__ = ("caller", "conversations", "earlier", "limit")

    def __init__(self, conversations: Conversations, caller: Caller, limit: int) -> None:
        self.conversations = conversations
        self.caller = caller
        self.limit = limit
        self.earlier: list[str] = []  # the turns a recalled conversation had: they live on with the next

    async def recall(self, key: str) -> list[JSON] | None:
        found = await self.conversations.chain(key, self.caller, self.limit)
        if found is None:
            return None
        items, self.earlier = found
        return items

    def check_room(self) -> None:
        self.conversations.check_room()

    async def keep(self, key: str, value: JSON) -> None:
        await self.conversations.keep(key, self.caller, value, self.earlier)

