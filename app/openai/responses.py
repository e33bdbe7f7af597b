"""``POST /v1/responses``: the Responses API, routed like chat, JSON or typed SSE events.

Foundry Local answers it for chat models; without ``max_output_tokens`` it budgets the whole context and fails,
so a default is added. A stream opens with ``response.created``/``in_progress`` whatever happens next: it is
decided on the first text delta, the terminal event, or a failure (typed ``response.failed``/``error``, or the
runtime's chat-style 200-plus-error event) — before then a failure may still move to another model.

Conversation state is the gateway's, not the runtime's: with ``store`` (OpenAI's default) the answer and the input
it answered are kept, in the caller's own space; a request with ``previous_response_id`` is sent as that whole
conversation followed by its own input, so any node, or a runtime that restarted, can answer it. The upstream
always gets ``store: false`` and no ``previous_response_id``; the client's answer says what the gateway did.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from app.core.errors import bad_request
from app.openai.checks import check_common, check_range, check_type, has_images, texts_of
from app.openai.endpoint import Answer, Endpoint, StoredResponses, Target, as_error
from app.openai.inspector import StreamInspector

JSON = dict[str, Any]
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_CONTENT = re.compile(rb'"delta"\s*:\s*"[^"]')


class Responses(Endpoint):
    name = "responses"
    path = "/v1/responses"
    capability = "chat"
    summary = "The Responses API (JSON or typed events), routed like chat"
    example: ClassVar[JSON] = {"model": "auto", "input": "Say hello", "max_output_tokens": 32}
    ends_undecided = True

    def validate(self, body: JSON, *, single_choice: bool) -> None:
        check_common(body)
        check_range(body, "max_output_tokens", 1, integer=True)
        for key in ("instructions", "previous_response_id"):
            check_type(body, key, str, "a string")
        check_type(body, "store", bool, "a boolean")
        check_type(body, "tools", list, "a list")
        check_type(body, "text", dict, "an object")
        if isinstance(body.get("text"), dict):
            check_type(body["text"], "format", dict, "an object")
        value = body.get("input")
        if value is None:
            raise bad_request("'input' is required.", param="input", code="missing_required_parameter")
        if not (isinstance(value, str) or (isinstance(value, list) and value)):
            raise bad_request("'input' must be a string or a non-empty list of input items.", param="input",
                              code="invalid_value")

    def needs(self, body: JSON) -> frozenset[str]:
        need = {self.capability}
        if body.get("tools"):
            need.add("tools")
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            need.add("json_schema")
        if has_images(body.get("input")):
            need.add("vision")
        return frozenset(need)

    def prompt_texts(self, body: JSON) -> list[str]:
        texts: list[str] = []
        texts_of(body.get("instructions"), texts)
        texts_of(body.get("input"), texts)
        return texts

    def output_budget(self, body: JSON) -> int | None:
        budget = body.get("max_output_tokens")
        return budget if isinstance(budget, int) else None

    async def recall(self, body: JSON, stored: StoredResponses) -> JSON:
        """``previous_response_id``: that conversation (each turn's input, then its output) before this input —
        within the body limit as a whole; and, when the answer is to be stored, room for it (else a 507 now)."""
        if body.get("store") is not False:
            stored.check_room()
        previous = body.get("previous_response_id")
        if previous is None:
            return body
        history = await stored.recall(previous)
        if history is None:
            raise bad_request(f"Previous response with id '{previous}' not found.", param="previous_response_id",
                              code="previous_response_not_found")
        assembled = {**body, "input": [*history, *input_items(body["input"])]}
        if len(orjson.dumps(assembled)) > stored.limit:
            raise bad_request(f"The request with the conversation of '{previous}' is larger than {stored.limit} "
                              "bytes, the most a request may send (GATEWAY_MAX_BODY_BYTES): start a new one, or send "
                              "its recent turns as input.", param="previous_response_id",
                              code="conversation_too_large")
        return assembled

    def keeps(self, body: JSON) -> bool:
        return body.get("store") is not False

    async def remember(self, body: JSON, answer: JSON, stored: StoredResponses) -> None:
        """Keep this turn once: the input it added, the answer, and the response it continued."""
        if body.get("store") is False or not isinstance(answer.get("id"), str):
            return
        if answer.get("status") not in ("completed", "incomplete"):
            return
        await stored.keep(answer["id"], {"input": input_items(body["input"]), "response": answer,
                                         "previous": body.get("previous_response_id")})

    def shareable(self, body: JSON) -> bool:
        return body.get("store") is False

    def payload(self, body: JSON, target: Target) -> tuple[bytes, str | None]:
        out = {key: value for key, value in body.items() if key != "previous_response_id"}  # expanded already
        out["model"] = target.upstream_id
        out["store"] = False  # the gateway keeps conversations itself
        if target.default_max_tokens is not None and out.get("max_output_tokens") is None:
            out["max_output_tokens"] = target.default_max_tokens  # Foundry Local budgets the whole context otherwise
        return orjson.dumps(out), None

    def answer(self, body: JSON, target: Target, input_tokens: int | None) -> Answer | None:
        fields = _as_told(body)
        return lambda data: {**data, **fields} if data.get("object") == "response" else data

    def stream_start(self, data: Any) -> tuple[bool, JSON | None]:
        """Decided on the first text, the end, or a failure; ``response.created``/``in_progress`` decide nothing."""
        if not isinstance(data, dict):
            return True, None
        kind = data.get("type")
        if kind is None and "error" in data:  # Foundry Local's chat-style failure: HTTP 200, one error event
            return True, as_error(data["error"])
        if kind == "response.failed":
            found = data.get("response")
            response: JSON = found if isinstance(found, dict) else {}
            return True, as_error(response.get("error") or "the response failed")
        if kind == "error":
            return True, as_error({"message": data.get("message"), "code": data.get("code"), "type": "server_error"})
        decisive = kind in TERMINAL or (isinstance(kind, str) and kind.endswith(".delta"))
        return decisive, None

    def inspector(self, body: JSON, target: Target, clock: Callable[[], float]) -> StreamInspector:
        inspector = ResponsesInspector(clock, strip_usage=False)
        inspector.told = _as_told(body)
        return inspector

    def usage(self, data: JSON) -> JSON | None:
        usage = data.get("usage")
        return responses_usage(usage) if isinstance(usage, dict) else None


class ResponsesInspector(StreamInspector):
    """The Responses API's typed events: text in ``response.output_text.delta``, usage and the end in the terminal
    ``response.completed|incomplete|failed`` (a failure there, or an ``error`` event, is the stream's error)."""

    content = _CONTENT
    __slots__ = ("told",)

    def __init__(self, clock: Callable[[], float], *, strip_usage: bool) -> None:
        super().__init__(clock, strip_usage=strip_usage)
        self.told: dict[str, Any] = {}  # what the response objects in the events say of the gateway's own doing

    def _event(self, data: dict[str, Any], event: bytes) -> bytes | None:
        kind = data.get("type")
        found = data.get("response")
        if isinstance(found, dict) and self.told:  # created, in_progress and the end carry the response object
            found.update(self.told)
            event = b"event: " + str(kind).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        if kind in TERMINAL:
            self.done = True
            response: dict[str, Any] = found if isinstance(found, dict) else {}
            self.final = response
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.usage = responses_usage(usage)
            if kind == "response.failed":
                error = response.get("error")
                self.error = error if isinstance(error, dict) else {"message": "the response failed"}
        elif kind == "error":
            self.error = {"message": str(data.get("message") or "upstream error"), "code": data.get("code")}
        elif kind is None and "error" in data:  # the chat-style failure event
            error = data["error"]
            self.error = error if isinstance(error, dict) else {"message": str(error)}
        else:
            self._timestamp(event)
        return event


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """The Responses API's usage in chat-completions terms (what metrics and the access log count)."""
    return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
            "total_tokens": usage.get("total_tokens")}


def _as_told(body: JSON) -> JSON:
    """What the client's answer says: stored by the gateway unless asked not to, after its previous response."""
    return {"store": body.get("store") is not False, "previous_response_id": body.get("previous_response_id")}


def input_items(value: Any) -> list[JSON]:
    """A request's ``input`` as a list of input items (a string is one user message), each with an id."""
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}] \
        if isinstance(value, str) else [item for item in value if isinstance(item, dict)]
    return [item if "id" in item else {**item, "id": f"msg_{secrets.token_hex(16)}"} for item in items]
