"""The proxied OpenAI endpoints and what differs between them, so the proxy's machinery — routing,
admission, loading, fallbacks, relaying, metrics — is written once.

Per endpoint: which capability a model needs (and what the body adds: ``tools``, json_schema, images),
how the body is checked, what the upstream gets (the routed model id, a default output budget), how a
stream starts (Foundry Local can answer 200 and fail in its first events: those become HTTP errors or
fallbacks), and what a JSON answer or a stream becomes on the way back (completions translated, tool
calls rebuilt from text, embeddings as base64 when asked, usage filled in).

Chat and completions: ``app.openai.compat``. Responses: Foundry Local's ``/responses`` (JSON and typed SSE
events). Embeddings: ``/embeddings`` on models built with ``hidden_states``. Transcriptions: an OpenAI
multipart upload; Foundry Local's own endpoint takes JSON naming a file on its host, so for a managed or
loopback runtime the upload is written to a file it can read.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.errors import GatewayError, bad_request
from app.openai import compat
from app.openai.sse import (
    RESPONSES_TERMINAL,
    ResponsesInspector,
    StreamInspector,
    event_json,
    responses_usage,
    split_events,
)
from app.openai.toolcalls import ToolCallChunks, fix_answer
from app.policy.routing import ENDPOINT_NEEDS

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # metric and log label, and the key of its upstream URL
    path: str  # where apps call it
    capability: str  # what a model must be able to do
    streams: bool


ENDPOINTS = {e.path: e for e in (
    Endpoint(name, path, ENDPOINT_NEEDS[name], streams) for name, path, streams in (
        ("chat", "/v1/chat/completions", True),
        ("completions", "/v1/completions", True),
        ("responses", "/v1/responses", True),
        ("embeddings", "/v1/embeddings", False),
        ("transcriptions", "/v1/audio/transcriptions", False),
    )
)}
BY_NAME = {e.name: e for e in ENDPOINTS.values()}


# --- what a request needs of a model ----------------------------------------------------------------------


def needs(endpoint: Endpoint, body: JSON) -> frozenset[str]:
    need = {endpoint.capability}
    if endpoint.capability == "chat":
        if body.get("tools"):
            need.add("tools")
        text = body.get("text")
        fmt = body.get("response_format") if endpoint.name != "responses" else \
            text.get("format") if isinstance(text, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            need.add("json_schema")
        if _has_images(body.get("messages") if endpoint.name != "responses" else body.get("input")):
            need.add("vision")
    return frozenset(need)


def _has_images(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in ("image_url", "input_image") for part in content):
            return True
    return False


# --- checking the body ---------------------------------------------------------------------------------------


def validate(endpoint: Endpoint, body: JSON, *, single_choice: bool) -> None:
    if endpoint.name in ("chat", "completions"):
        compat.validate(body, endpoint.name, single_choice=single_choice)
    elif endpoint.name == "responses":
        _validate_responses(body)
    elif endpoint.name == "embeddings":
        _validate_embeddings(body)


def _validate_responses(body: JSON) -> None:
    compat.check_common(body)
    compat.check_range(body, "max_output_tokens", 1, integer=True)
    for key in ("instructions", "previous_response_id"):
        compat.check_type(body, key, str, "a string")
    compat.check_type(body, "store", bool, "a boolean")
    compat.check_type(body, "tools", list, "a list")
    compat.check_type(body, "text", dict, "an object")
    if isinstance(body.get("text"), dict):
        compat.check_type(body["text"], "format", dict, "an object")
    value = body.get("input")
    if value is None:
        raise bad_request("'input' is required.", param="input", code="missing_required_parameter")
    if not (isinstance(value, str) or (isinstance(value, list) and value)):
        raise bad_request("'input' must be a string or a non-empty list of input items.", param="input",
                          code="invalid_value")


def _validate_embeddings(body: JSON) -> None:
    compat.check_type(body, "model", str, "a string")
    value = body.get("input")
    if value is None:
        raise bad_request("'input' is required.", param="input", code="missing_required_parameter")
    if isinstance(value, list):
        if not value:
            raise bad_request("'input' must not be an empty list.", param="input", code="invalid_value")
        if not all(isinstance(item, str) for item in value):
            raise bad_request("'input' must be a string or a list of strings: token-id input is not supported by "
                              "Foundry Local.", param="input", code="unsupported_value")
    elif not isinstance(value, str):
        raise bad_request("'input' must be a string or a list of strings.", param="input", code="invalid_type")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'.", param="encoding_format",
                          code="invalid_value")
    if body.get("dimensions") is not None:
        raise bad_request("'dimensions' is not supported: local embedding models return their full size.",
                          param="dimensions", code="unsupported_value")


# --- the upstream's body ---------------------------------------------------------------------------------------


def prepare(endpoint: Endpoint, body: JSON, *, upstream_id: str, stream: bool, default_max_tokens: int | None,
            to_chat: bool) -> bytes:
    if endpoint.name in ("chat", "completions"):
        return compat.prepare_upstream_body(body, upstream_id=upstream_id, stream=stream,
                                            default_max_tokens=default_max_tokens, to_chat=to_chat)
    out = dict(body)
    out["model"] = upstream_id
    if endpoint.name == "responses" and default_max_tokens is not None and out.get("max_output_tokens") is None:
        out["max_output_tokens"] = default_max_tokens  # Foundry Local budgets the whole context otherwise
    if endpoint.name == "embeddings":
        out.pop("encoding_format", None)  # the runtime ignores it; the gateway encodes (answer() below)
        out.pop("stream", None)  # there is no streaming of embeddings
    return orjson.dumps(out)


# --- streams ------------------------------------------------------------------------------------------------


def fixes_tool_calls(endpoint: Endpoint, body: JSON, parse_tool_calls: bool) -> bool:
    """Whether the model's tool calls come back as text the gateway turns into ``tool_calls``."""
    return parse_tool_calls and endpoint.name == "chat" and bool(body.get("tools"))


def inspector(endpoint: Endpoint, body: JSON, clock: Callable[[], float],
              translate: Callable[[JSON], JSON] | None, *, parse_tool_calls: bool) -> StreamInspector:
    if endpoint.name == "responses":
        return ResponsesInspector(clock, strip_usage=False)
    rewriter = ToolCallChunks() if fixes_tool_calls(endpoint, body, parse_tool_calls) else None
    return StreamInspector(clock, strip_usage=not compat.wants_usage(body), translate=translate, rewriter=rewriter)


def stream_start(endpoint: Endpoint, data: Any) -> tuple[bool, JSON | None]:
    """Whether this first events' data decides how the stream started, and the error it carries if any.

    Chat streams decide on their first data event (Foundry Local: a lone error event and no more).
    Responses streams open with ``response.created``/``in_progress`` whatever happens next: they decide
    on the first text, the end, or a failure."""
    if not isinstance(data, dict):
        return True, None
    if endpoint.name != "responses":
        error = data.get("error") if "choices" not in data else None
        return True, _as_error(error) if error is not None else None
    kind = data.get("type")
    if kind is None and "error" in data:  # Foundry Local's chat-style failure: HTTP 200, one error event
        return True, _as_error(data["error"])
    if kind == "response.failed":
        found = data.get("response")
        response: JSON = found if isinstance(found, dict) else {}
        return True, _as_error(response.get("error") or "the response failed")
    if kind == "error":
        return True, _as_error({"message": data.get("message"), "code": data.get("code"), "type": "server_error"})
    decisive = kind in RESPONSES_TERMINAL or (isinstance(kind, str) and kind.endswith(".delta"))
    return decisive, None


def _as_error(error: Any) -> JSON:
    return error if isinstance(error, dict) else {"message": str(error)}


# --- JSON answers -------------------------------------------------------------------------------------------


Answer = Callable[[JSON], JSON]


def answer(endpoint: Endpoint, body: JSON, translate: Callable[[JSON], JSON] | None, *, parse_tool_calls: bool,
           input_tokens: int | None = None) -> Answer | None:
    """What to do to the upstream's JSON answer before the client gets it (None: nothing).
    ``input_tokens``: the embeddings' input counted by the gateway (see :func:`embedding_inputs`)."""
    if fixes_tool_calls(endpoint, body, parse_tool_calls):
        return fix_answer
    if endpoint.name == "embeddings":
        as_base64 = body.get("encoding_format") == "base64"
        return lambda data: _embeddings_answer(data, as_base64, input_tokens)
    return translate


def embedding_inputs(body: JSON) -> list[str]:
    value = body["input"]
    return value if isinstance(value, list) else [value]


def usage_of(endpoint: Endpoint, data: JSON) -> JSON | None:
    """The answer's usage in chat-completions terms (for metrics and the access log)."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    return responses_usage(usage) if endpoint.name == "responses" else usage


def _embeddings_answer(data: JSON, as_base64: bool, tokens: int | None) -> JSON:
    if as_base64:  # OpenAI's base64: the float32 vector, little-endian (the runtime ignores the option)
        for item in data.get("data") or []:
            vector = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(vector, list):
                item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    usage = data.get("usage")
    if (not isinstance(usage, dict) or not usage.get("prompt_tokens")) and tokens is not None:  # Foundry Local: 0
        data["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return data


# --- tokens the gateway counts itself (a stream cut before its usage came) ----------------------------------


def prompt_texts(body: JSON) -> list[str]:
    """The text a request sends the model (messages, prompt, input, instructions), for counting its tokens."""
    texts: list[str] = []
    for key in ("prompt", "input", "instructions"):
        _texts_of(body.get(key), texts)
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            _texts_of(message.get("content"), texts)
    return texts


def _texts_of(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                _texts_of(item.get("text") if "text" in item else item.get("content"), out)


def generated_texts(blocks: list[bytes]) -> list[str]:
    """The generated text in a stream's blocks as relayed: content, reasoning and tool-call arguments of chat
    chunks, completions' ``text``, the Responses API's ``….delta`` events."""
    texts: list[str] = []
    for block in blocks:
        for event in split_events(block):
            data = event_json(event)
            if not isinstance(data, dict):
                continue
            delta = data.get("delta")
            if isinstance(delta, str):
                texts.append(delta)
            for choice in data.get("choices") or ():
                if isinstance(choice, dict):
                    _choice_texts(choice, texts)
    return texts


def _choice_texts(choice: JSON, out: list[str]) -> None:
    if isinstance(choice.get("text"), str):
        out.append(choice["text"])
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return
    for key in ("content", "reasoning_content"):
        if isinstance(delta.get(key), str):
            out.append(delta[key])
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            out.append(function["arguments"])


# --- upstream errors that are the request's fault -------------------------------------------------------------


def client_error(endpoint: Endpoint, status: int, message: str, model: str) -> GatewayError | None:
    """A 500 from the runtime that really says the request cannot work (so no fallback, a 400)."""
    text = message.lower()
    if endpoint.name == "embeddings" and "cannot be greater than model context_length" in text:
        return GatewayError(400, f"The input is longer than model '{model}' can embed ({message}).",
                            code="context_length_exceeded", param="input")
    if "hidden_states" in text and "not found" in text:
        return GatewayError(400, f"Model '{model}' does not produce embeddings (it has no hidden_states output; "
                                 "set its capabilities in the registry).", code="unsupported_value", param="model")
    if "exceeds the model's maximum context length" in text:
        return GatewayError(400, message, code="context_length_exceeded")
    return None


# --- audio uploads ---------------------------------------------------------------------------------------------

TRANSCRIPTION_FORMATS = ("json", "text")


async def parse_upload(raw: bytes, content_type: str) -> JSON:
    """An OpenAI ``multipart/form-data`` transcription request as a dict: form fields, and ``file`` as
    (filename, content type, bytes). Parsed by Starlette's form parser (python-multipart)."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    if not content_type.startswith("multipart/form-data"):
        raise bad_request("Send the audio as multipart/form-data (a 'file' part and a 'model' field).",
                          code="invalid_request")
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode("latin-1"))]}
    body: JSON = {}
    try:
        async with Request(scope, receive).form(max_part_size=len(raw) + 1) as form:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    body[key] = (value.filename or "audio", value.content_type or "application/octet-stream",
                                 await value.read())
                else:
                    body[key] = value
    except Exception as exc:  # a malformed body is the client's error, whatever the parser raised
        raise bad_request(f"The multipart body could not be read: {exc}", code="invalid_request") from None
    if not isinstance(body.get("file"), tuple):
        raise bad_request("'file' is required: the audio to transcribe.", param="file",
                          code="missing_required_parameter")
    fmt = body.get("response_format", "json")
    if fmt not in TRANSCRIPTION_FORMATS:
        raise bad_request(f"'response_format' must be one of {', '.join(TRANSCRIPTION_FORMATS)} here "
                          f"(Foundry Local returns plain text), not '{fmt}'.", param="response_format",
                          code="unsupported_value")
    if body.get("temperature") not in (None, ""):
        try:
            temperature = float(body["temperature"])
        except ValueError:
            temperature = -1.0
        if not 0 <= temperature <= 1:
            raise bad_request("'temperature' must be a number from 0 to 1.", param="temperature",
                              code="invalid_value")
    if body.get("stream") not in (None, "false", "False"):
        raise bad_request("Streaming transcription is not supported.", param="stream", code="unsupported_value")
    return body


def transcription_body(body: JSON, upstream_id: str, foundry_file: str | None) -> tuple[bytes, str]:
    """The upstream's request: Foundry Local's JSON naming ``foundry_file`` (written by the caller), or the
    multipart upload as it came with the routed model (any other OpenAI-compatible server)."""
    import httpx

    if foundry_file is not None:
        out: JSON = {"model": upstream_id, "filename": foundry_file}
        for key in ("language", "temperature", "prompt"):
            if body.get(key) not in (None, ""):
                out[key] = float(body[key]) if key == "temperature" else body[key]
        return orjson.dumps(out), "application/json"
    fields = {k: v for k, v in body.items() if k != "file" and isinstance(v, str)}
    fields["model"] = upstream_id
    fields["response_format"] = "json"  # the gateway answers text itself (transcription_answer)
    filename, content_type, data = body["file"]
    request = httpx.Request("POST", "http://upstream/", data=fields, files={"file": (filename, data, content_type)})
    return request.read(), request.headers["content-type"]


def transcription_answer(body: JSON) -> Callable[[JSON], JSON]:
    """OpenAI's ``{"text": …}``; for ``response_format=text`` the proxy sends the text itself."""
    return lambda data: {"text": str(data.get("text", ""))}
