"""``POST /v1/audio/transcriptions``: an OpenAI multipart upload (its own size limit, ``GATEWAY_MAX_AUDIO_BYTES``),
routed to ``transcription`` models.

Foundry Local's endpoint takes JSON naming a file on its own disk, so for a runtime on this host the upload is
staged as a file it can read (the proxy writes it, and deletes it with the attempt; only a plain extension of the
client's file name is kept). Any other OpenAI-compatible server gets the multipart upload with the routed model.
The answer is OpenAI's ``{"text": …}``, or the text itself for ``response_format=text``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from app.core.errors import bad_request
from app.core.settings import Settings
from app.openai.endpoint import Answer, Endpoint, Target

JSON = dict[str, Any]
FORMATS = ("json", "text")
_PLAIN_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,7}")


class Transcriptions(Endpoint):
    name = "transcriptions"
    operation = "transcription"
    path = "/v1/audio/transcriptions"
    capability = "transcription"
    streams = False
    cacheable = False  # uploads: a key would hash megabytes of audio for answers rarely asked twice
    batchable = False  # a multipart upload: a batch line's body is JSON
    summary = "Speech to text, routed to transcription models"

    def request_content(self) -> JSON:
        return {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "the audio"},
                           "model": {"type": "string", "default": "auto"}, "language": {"type": "string"},
                           "prompt": {"type": "string"}, "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                           "response_format": {"type": "string", "enum": list(FORMATS), "default": "json"}},
        }}}

    def body_limit(self, settings: Settings) -> int:
        return settings.max_audio_bytes

    async def parse(self, raw: bytes, content_type: str) -> JSON:
        return await parse_upload(raw, content_type)

    def logged(self, body: JSON) -> JSON:
        return {k: v for k, v in body.items() if k != "file"}

    def staged(self, body: JSON) -> tuple[str, bytes] | None:
        filename, _, data = body["file"]
        suffix = Path(str(filename)).suffix
        return (suffix if _PLAIN_SUFFIX.fullmatch(suffix) else ""), data

    def payload(self, body: JSON, target: Target) -> tuple[bytes, str | None]:
        """Foundry Local's JSON naming the staged file, or the multipart upload as it came with the routed model."""
        import httpx

        if target.staged_file is not None:
            out: JSON = {"model": target.upstream_id, "filename": target.staged_file}
            for key in ("language", "temperature", "prompt"):
                if body.get(key) not in (None, ""):
                    out[key] = float(body[key]) if key == "temperature" else body[key]
            return orjson.dumps(out), "application/json"
        fields = {k: v for k, v in body.items() if k != "file" and isinstance(v, str)}
        fields["model"] = target.upstream_id
        fields["response_format"] = "json"  # the gateway answers text itself (as_text)
        filename, content_type, data = body["file"]
        request = httpx.Request("POST", "http://upstream/", data=fields,
                                files={"file": (filename, data, content_type)})
        return request.read(), request.headers["content-type"]

    def answer(self, body: JSON, target: Target, input_tokens: int | None) -> Answer | None:
        return lambda data: {"text": str(data.get("text", ""))}

    def as_text(self, body: JSON) -> bool:
        return body.get("response_format") == "text"


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
    if fmt not in FORMATS:
        raise bad_request(f"'response_format' must be one of {', '.join(FORMATS)} here "
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
