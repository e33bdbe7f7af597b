"""``POST /v1/chat/completions``: forwarded as it came, with what Foundry Local needs on top.

- no ``max_tokens`` → Foundry Local budgets the whole context and rejects the request, so a default (per model,
  clamped to its context length) is added;
- usage in streams comes only with ``stream_options.include_usage`` → always asked for (token metrics), and the
  extra chunk is dropped again when the client did not ask;
- tool calls that a model writes as text (Foundry Local's issue #874) are rebuilt as ``tool_calls`` for registry
  entries with ``parse_tool_calls`` (``app.openai.toolcalls``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from app.core.errors import bad_request
from app.openai.checks import check_sampling, has_images, texts_of
from app.openai.endpoint import Answer, Endpoint, Target
from app.openai.inspector import StreamInspector
from app.openai.toolcalls import ToolCallChunks, fix_answer

JSON = dict[str, Any]


ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class Chat(Endpoint):
    name = "chat"
    path = "/v1/chat/completions"
    capability = "chat"
    summary = "OpenAI chat completions, routed by task and RAM"
    example: ClassVar[JSON] = {"model": "auto", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}

    def validate(self, body: JSON, *, single_choice: bool) -> None:
        check_sampling(body, single_choice=single_choice)
        messages = body.get("messages")
        if messages is None:
            raise bad_request("'messages' is required.", param="messages", code="missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty list.", param="messages", code="invalid_value")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise bad_request(f"'messages[{i}]' must be an object.", param=f"messages[{i}]", code="invalid_type")
            role = message.get("role")
            if role not in ROLES:
                shown = f"'{str(role)[:40]}'" if isinstance(role, str) else "missing"
                raise bad_request(f"'messages[{i}].role' must be one of {', '.join(ROLES)} (got {shown}).",
                                  param=f"messages[{i}].role", code="invalid_value")
            content = message.get("content")
            if content is not None and not isinstance(content, str | list):
                raise bad_request(f"'messages[{i}].content' must be a string, a list of parts or null.",
                                  param=f"messages[{i}].content", code="invalid_type")

    def by_meaning(self, body: JSON) -> tuple[str, JSON] | None:
        """The last message when it is the user's, in text only: the question compared by meaning, with the system
        prompt and the conversation before it matched exactly."""
        messages = body["messages"]
        last = messages[-1]
        if last.get("role") != "user" or has_images([last]):
            return None
        texts: list[str] = []
        texts_of(last.get("content"), texts)
        text = " ".join(texts).strip()
        if not text:
            return None
        return text, {**body, "messages": [*messages[:-1], {**last, "content": ""}]}

    def needs(self, body: JSON) -> frozenset[str]:
        need = {self.capability}
        if body.get("tools"):
            need.add("tools")
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            need.add("json_schema")
        if has_images(body.get("messages")):
            need.add("vision")
        return frozenset(need)

    def prompt_texts(self, body: JSON) -> list[str]:
        texts: list[str] = []
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                texts_of(message.get("content"), texts)
        return texts

    def output_budget(self, body: JSON) -> int | None:
        budget = body.get("max_completion_tokens") or body.get("max_tokens")
        return budget if isinstance(budget, int) else None

    def choices(self, body: JSON) -> int:
        n = body.get("n")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1

    def payload(self, body: JSON, target: Target) -> tuple[bytes, str | None]:
        return orjson.dumps(self.upstream_body(body, target)), None

    def upstream_body(self, body: JSON, target: Target) -> JSON:
        """The routed model, a default output budget, usage asked for in streams."""
        out = dict(body)
        out["model"] = target.upstream_id
        if target.default_max_tokens is not None and out.get("max_tokens") is None \
                and out.get("max_completion_tokens") is None:
            out["max_tokens"] = target.default_max_tokens
        if target.stream:
            options = out.get("stream_options")
            out["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {
                "include_usage": True}
        return out

    def fixes_tool_calls(self, body: JSON, target: Target) -> bool:
        """Whether the model's tool calls come back as text the gateway turns into ``tool_calls``."""
        return target.parse_tool_calls and bool(body.get("tools"))

    def inspector(self, body: JSON, target: Target, clock: Callable[[], float]) -> StreamInspector:
        rewriter = ToolCallChunks() if self.fixes_tool_calls(body, target) else None
        return StreamInspector(clock, strip_usage=not wants_usage(body), rewriter=rewriter)

    def answer(self, body: JSON, target: Target, input_tokens: int | None) -> Answer | None:
        return fix_answer if self.fixes_tool_calls(body, target) else None


def wants_usage(body: JSON) -> bool:
    options = body.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))
