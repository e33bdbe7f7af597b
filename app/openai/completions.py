"""``POST /v1/completions``: Foundry Local has no such route, so there the request is translated to a chat
completion (the prompt as one user message) and the answer — JSON or each chunk of a stream — back to a text
completion. An upstream that has the route (``openai`` kind) gets the request as it came."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from app.core.errors import bad_request
from app.openai.chat import Chat, wants_usage
from app.openai.checks import check_sampling, texts_of
from app.openai.endpoint import Answer, Target
from app.openai.inspector import StreamInspector

JSON = dict[str, Any]
_COMPLETION_ONLY = ("prompt", "echo", "suffix", "best_of", "logprobs")


class Completions(Chat):
    name = "completions"
    operation = "text_completion"
    path = "/v1/completions"
    summary = "OpenAI completions (translated to chat for Foundry Local)"
    example: ClassVar[JSON] = {"model": "auto", "prompt": "Say hello", "max_tokens": 32}

    def validate(self, body: JSON, *, single_choice: bool) -> None:
        check_sampling(body, single_choice=single_choice)
        prompt = body.get("prompt")
        if prompt is None:
            raise bad_request("'prompt' is required.", param="prompt", code="missing_required_parameter")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            return
        if not isinstance(prompt, str):
            raise bad_request("'prompt' must be a string (or a list with one string).", param="prompt",
                              code="invalid_value")

    def prompt_texts(self, body: JSON) -> list[str]:
        texts: list[str] = []
        texts_of(body.get("prompt"), texts)
        return texts

    def upstream_route(self, target: Target) -> str:
        return self.name if target.has_completions else Chat.name

    def payload(self, body: JSON, target: Target) -> tuple[bytes, str | None]:
        request = body if target.has_completions else completion_to_chat(body)
        return orjson.dumps(self.upstream_body(request, target)), None

    def inspector(self, body: JSON, target: Target, clock: Callable[[], float]) -> StreamInspector:
        translate = None if target.has_completions else chat_to_completion
        return StreamInspector(clock, strip_usage=not wants_usage(body), translate=translate)

    def answer(self, body: JSON, target: Target, input_tokens: int | None) -> Answer | None:
        return None if target.has_completions else chat_to_completion


def completion_to_chat(body: JSON) -> JSON:
    if body.get("echo"):
        raise bad_request("'echo' is not supported by this upstream.", param="echo", code="unsupported_value")
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported by this upstream.", param="suffix", code="unsupported_value")
    prompt = body["prompt"]
    text = prompt[0] if isinstance(prompt, list) else prompt
    out = {k: v for k, v in body.items() if k not in _COMPLETION_ONLY}
    out["messages"] = [{"role": "user", "content": text}]
    return out


def chat_to_completion(data: JSON) -> JSON:
    """A chat.completion (or chunk) as a text_completion (or its chunk)."""
    choices = []
    for choice in data.get("choices") or []:
        part = choice.get("message") or choice.get("delta") or {}
        choices.append({
            "text": part.get("content") or "",
            "index": choice.get("index", 0),
            "logprobs": None,
            "finish_reason": choice.get("finish_reason"),
        })
    out: JSON = {
        "id": str(data.get("id") or f"cmpl-{int(time.time() * 1000)}").replace("chatcmpl", "cmpl", 1),
        "object": "text_completion",
        "created": data.get("created") or int(time.time()),
        "model": data.get("model", ""),
        "choices": choices,
    }
    if data.get("usage") is not None:
        out["usage"] = data["usage"]
    return out
