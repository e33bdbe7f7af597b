"""What every proxied OpenAI endpoint does, and the hooks where one differs from another.

The proxy's machinery — routing, admission, loading, fallbacks, relaying, metrics — is written once and asks the
request's :class:`Endpoint` at each step: how big a body may be and how to parse and check it, which capabilities
a model needs for it, the body the upstream gets, how a stream starts (Foundry Local can answer 200 and fail in
its first events) and what a stream or a JSON answer becomes on the way back. Each endpoint is a subclass in its
own module (``chat``, ``completions``, ``responses``, ``embeddings``, ``transcriptions``) that overrides only what
differs; ``app.openai.ENDPOINTS`` is the one table of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Protocol

import orjson

from app.core.errors import GatewayError
from app.core.settings import Settings
from app.openai.checks import parse_body
from app.openai.inspector import StreamInspector

JSON = dict[str, Any]
Answer = Callable[[JSON], JSON]


class Target(NamedTuple):
    """Where one attempt sends a request: the upstream's id for the routed model and what that upstream is (a
    named tuple: one is made per attempt, on the hot path)."""

    upstream_id: str
    stream: bool = False
    default_max_tokens: int | None = None  # added where the request has none (Foundry Local needs one)
    has_completions: bool = True  # the upstream serves /v1/completions itself (Foundry Local does not)
    parse_tool_calls: bool = False  # the model writes its tool calls as text (registry ``parse_tool_calls``)
    staged_file: str | None = None  # a file written for a runtime that reads uploads from its own disk


class StoredResponses(Protocol):
    """What an endpoint may keep beyond a request, in the caller's own space (the Responses API's stored
    responses); ``app.gateway.conversations`` is the one behind it."""

    limit: int  # the most bytes what is recalled, with the request, may have

    async def recall(self, key: str) -> list[JSON] | None:
        """The items of the conversation up to and including that response (None: no such response)."""
        ...

    def check_room(self) -> None:
        """Raise (507) if what this request would keep could not be kept now."""
        ...

    async def keep(self, key: str, value: JSON) -> None: ...


class Endpoint:
    name: ClassVar[str]  # metric and log label, and the key of its upstream URL
    path: ClassVar[str]  # where apps call it
    capability: ClassVar[str]  # what a model must be able to do
    streams: ClassVar[bool] = True  # it takes "stream": true
    summary: ClassVar[str]  # its line in the OpenAPI document
    operation: ClassVar[str] = "chat"  # gen_ai.operation.name in traces
    example: ClassVar[JSON] = {}
    # a stream may end without ever deciding how it started (the Responses API's typed events)
    ends_undecided: ClassVar[bool] = False
    cacheable: ClassVar[bool] = True  # its answers may be kept and replayed (the response cache)
    batchable: ClassVar[bool] = True  # a batch's lines may call it (a JSON body: the Batch API's ``url``)

    # --- the request ---------------------------------------------------------------------------------------

    def request_content(self) -> JSON:
        """The request body as the OpenAPI document describes it."""
        return {"application/json": {"schema": {"type": "object", "additionalProperties": True},
                                     "example": self.example}}

    def body_limit(self, settings: Settings) -> int:
        return settings.max_body_bytes

    async def parse(self, raw: bytes, content_type: str) -> JSON:
        return parse_body(raw)

    def validate(self, body: JSON, *, single_choice: bool) -> None:
        """A 400 for what the gateway reads or the runtime mishandles (``single_choice``: the upstream ignores n)."""

    def logged(self, body: JSON) -> JSON:
        """The body as the access log may show it."""
        return body

    def needs(self, body: JSON) -> frozenset[str]:
        """The capabilities a model needs to answer this body."""
        return frozenset({self.capability})

    async def recall(self, body: JSON, stored: StoredResponses) -> JSON:
        """The body with what it refers to brought in (the Responses API: ``previous_response_id``'s conversation)."""
        return body

    def keeps(self, body: JSON) -> bool:
        """Whether :meth:`remember` may keep this request's answer (it is then kept before the answer's end
        reaches the client)."""
        return False

    async def remember(self, body: JSON, answer: JSON, stored: StoredResponses) -> None:
        """Keep what a later request may refer to, once the answer is whole (``body``: as the client sent it,
        before :meth:`recall`)."""

    def deterministic(self, body: JSON) -> bool:
        """Whether the answer is meant to repeat: greedy decoding (``temperature`` 0) or a ``seed``."""
        return body.get("temperature") == 0 or body.get("seed") is not None

    def shareable(self, body: JSON) -> bool:
        """Whether identical requests in flight may share this one's generation (a stored response may not: each
        request is its own response, with its own id, in its own caller's space)."""
        return True

    def by_meaning(self, body: JSON) -> tuple[str, JSON] | None:
        """For the semantic cache: the text compared by meaning and the body without it (which must match
        exactly); None: exact matches only."""
        return None

    def prompt_texts(self, body: JSON) -> list[str]:
        """The text the request sends the model (for counting its tokens)."""
        return []

    def output_budget(self, body: JSON) -> int | None:
        """The most tokens one answer may generate (None: the model's default budget applies)."""
        return 0

    def choices(self, body: JSON) -> int:
        """How many answers the request asks for (``n``): each may spend the whole output budget."""
        return 1

    # --- what the upstream gets ----------------------------------------------------------------------------

    def upstream_route(self, target: Target) -> str:
        """The upstream URL (by endpoint name) this request goes to."""
        return self.name

    def staged(self, body: JSON) -> tuple[str, bytes] | None:
        """A file to write where a local runtime reads it (its name's suffix, its bytes), or None."""
        return None

    def payload(self, body: JSON, target: Target) -> tuple[bytes, str | None]:
        """The upstream's body and its content type (None: JSON)."""
        out = dict(body)
        out["model"] = target.upstream_id
        return orjson.dumps(out), None

    # --- what comes back ----------------------------------------------------------------------------------

    def stream_start(self, data: Any) -> tuple[bool, JSON | None]:
        """Whether these first events' data decide how the stream started, and the error it carries if any.
        Chat-style streams decide on their first data event (Foundry Local: a lone error event and no more)."""
        if not isinstance(data, dict):
            return True, None
        error = data.get("error") if "choices" not in data else None
        return True, as_error(error) if error is not None else None

    def inspector(self, body: JSON, target: Target, clock: Callable[[], float]) -> StreamInspector:
        return StreamInspector(clock, strip_usage=False)

    def counted_inputs(self, body: JSON) -> list[str] | None:
        """Inputs whose tokens the gateway counts itself while the upstream works (the upstream reports none)."""
        return None

    def answer(self, body: JSON, target: Target, input_tokens: int | None) -> Answer | None:
        """What to do to the upstream's JSON answer before the client gets it (None: nothing)."""
        return None

    def as_text(self, body: JSON) -> bool:
        """Whether the client gets the answer's ``text`` as plain text rather than JSON."""
        return False

    def usage(self, data: JSON) -> JSON | None:
        """The answer's usage in chat-completions terms (for metrics, the access log and quotas)."""
        usage = data.get("usage")
        return usage if isinstance(usage, dict) else None

    def client_error(self, status: int, message: str, model: str) -> GatewayError | None:
        """A runtime 500 that really says the request cannot work (so a 400, and no fallback)."""
        text = message.lower()
        if "hidden_states" in text and "not found" in text:
            return GatewayError(400, f"Model '{model}' does not produce embeddings (it has no hidden_states output; "
                                     "set its capabilities in the registry).", code="unsupported_value", param="model")
        if "exceeds the model's maximum context length" in text:
            return GatewayError(400, message, code="context_length_exceeded")
        return None


def as_error(error: Any) -> JSON:
    return error if isinstance(error, dict) else {"message": str(error)}
