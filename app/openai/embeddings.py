"""``POST /v1/embeddings``: routed by capability to models built with ``hidden_states`` (``auto`` with no task
header: the best embedding model that fits).

Foundry Local ignores ``encoding_format`` (floats come back) and reports 0 tokens; the gateway packs OpenAI's
base64 (little-endian float32) itself, and counts the input with the model's own tokenizer in a thread while the
runtime works. Token-id input and ``dimensions`` are clear 400s; an input longer than the model's context is a
400 ``context_length_exceeded`` instead of the runtime's 500.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, ClassVar

import orjson

from app.core.errors import GatewayError, bad_request
from app.openai.checks import check_type
from app.openai.endpoint import Answer, Endpoint, Target

JSON = dict[str, Any]


class Embeddings(Endpoint):
    name = "embeddings"
    operation = "embeddings"
    path = "/v1/embeddings"
    capability = "embeddings"
    streams = False
    summary = "Embeddings (float or base64), routed to embedding models"
    example: ClassVar[JSON] = {"model": "auto", "input": ["first text", "second text"]}

    def validate(self, body: JSON, *, single_choice: bool) -> None:
        check_type(body, "model", str, "a string")
        value = body.get("input")
        if value is None:
            raise bad_request("'input' is required.", param="input", code="missing_required_parameter")
        if isinstance(value, list):
            if not value:
                raise bad_request("'input' must not be an empty list.", param="input", code="invalid_value")
            if not all(isinstance(item, str) for item in value):
                raise bad_request("'input' must be a string or a list of strings: token-id input is not supported "
                                  "by Foundry Local.", param="input", code="unsupported_value")
        elif not isinstance(value, str):
            raise bad_request("'input' must be a string or a list of strings.", param="input", code="invalid_type")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise bad_request("'encoding_format' must be 'float' or 'base64'.", param="encoding_format",
                              code="invalid_value")
        if body.get("dimensions") is not None:
            raise bad_request("'dimensions' is not supported: local embedding models return their full size.",
                              param="dimensions", code="unsupported_value")

    def deterministic(self, body: JSON) -> bool:
        return True  # a text has one embedding

    def prompt_texts(self, body: JSON) -> list[str]:
        return inputs(body)

    def payload(self, body: JSON, target: Target) -> tuple[bytes, str | None]:
        out = {k: v for k, v in body.items() if k not in ("encoding_format", "stream")}  # the gateway encodes
        out["model"] = target.upstream_id
        return orjson.dumps(out), None

    def counted_inputs(self, body: JSON) -> list[str] | None:
        return inputs(body)

    def answer(self, body: JSON, target: Target, input_tokens: int | None) -> Answer | None:
        as_base64 = body.get("encoding_format") == "base64"
        return lambda data: _finished(data, as_base64, input_tokens)

    def client_error(self, status: int, message: str, model: str) -> GatewayError | None:
        if "cannot be greater than model context_length" in message.lower():
            return GatewayError(400, f"The input is longer than model '{model}' can embed ({message}).",
                                code="context_length_exceeded", param="input")
        return super().client_error(status, message, model)


def inputs(body: JSON) -> list[str]:
    value = body["input"]
    return value if isinstance(value, list) else [value]


def _finished(data: JSON, as_base64: bool, tokens: int | None) -> JSON:
    if as_base64:  # OpenAI's base64: the float32 vector, little-endian (the runtime ignores the option)
        for item in data.get("data") or []:
            vector = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(vector, list):
                item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    usage = data.get("usage")
    if (not isinstance(usage, dict) or not usage.get("prompt_tokens")) and tokens is not None:  # Foundry Local: 0
        data["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return data
