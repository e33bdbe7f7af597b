"""Failures talking to an upstream, mapped to what the client hears — in one place.

httpx raises its own exception hierarchy (``ConnectError``, ``ReadError``, ``RemoteProtocolError``, the
timeouts…); the proxy needs to know two things of each: what the client is told (an OpenAI error with a status
and a code), and whether another model (or node) may take over. Before any content reached the client every
failure here is a :class:`~app.core.errors.Retry`:

  ConnectError, ConnectTimeout   503 upstream_unavailable  cause "connect" (transport: says nothing of the model)
  any other httpx.HTTPError      502 upstream_error        cause "broken"
  no first byte in time          504 upstream_timeout      cause "timeout"
  not the format asked for       502 upstream_bad_response cause "bad_response"

After content reached the client the relay ends the stream with one error event instead (``app.proxy.stages.relay``).

What an upstream says of a refusal is passed on to the client only after its internals are taken out — source
locations (``search_options.cc:108``), C++ signatures, URLs and file paths of the host — and kept whole in the log.
"""

from __future__ import annotations

import logging
import re

import httpx
import orjson

from app.core.errors import FailureCause, GatewayError, Retry

log = logging.getLogger("foundry_gateway.upstream")
_CODE = re.compile(
    r"\b[\w./\\-]+\.(?:cc|cpp|cxx|c|h|hpp|hh|py|rs|go|cs|java|mm?):\d+(?::\d+)?\b"  # a source location
    r"|(?:\b[\w:<>*&]+\s+)?(?:\b\w+::)+~?\w+\([^()]*\)"  # a C++ signature (its return type first)
)
_PLACES = re.compile(
    r"(?P<url>\bhttps?://[^\s'\"<>)]+)"  # a URL of the host or the runtime
    r"|(?P<path>(?<![\w./])/(?:[\w.@-]+/)+[\w.@-]*|\b[A-Za-z]:\\(?:[^\s\\'\"]+\\)+[^\s\\'\"]*)"  # a file path
)


def transport_failure(model: str, exc: httpx.HTTPError) -> Retry:
    """An httpx error while sending or before the answer's first byte."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Retry(GatewayError(503, f"Upstream unreachable for model '{model}': {exc}",
                                  code="upstream_unavailable"), FailureCause.CONNECT, transport=True)
    return Retry(GatewayError(502, f"Upstream failed for model '{model}': {exc.__class__.__name__}: {exc}",
                              code="upstream_error"), FailureCause.BROKEN)


def broke_mid_answer(exc: httpx.HTTPError) -> Retry:
    """An httpx error while reading a JSON answer (nothing reached the client yet)."""
    return Retry(GatewayError(502, f"Upstream failed mid-response: {exc.__class__.__name__}",
                              code="upstream_error"), FailureCause.BROKEN)


def broke_mid_stream(exc: httpx.HTTPError) -> GatewayError:
    """An httpx error after a stream's first bytes reached the client: its last event."""
    return GatewayError(502, f"The upstream connection broke mid-stream ({exc.__class__.__name__}).",
                        code="upstream_error")


def sent_nothing(model: str, seconds: float) -> Retry:
    return Retry(GatewayError(504, f"Model '{model}' sent nothing for {seconds:g}s.", code="upstream_timeout"),
                 FailureCause.TIMEOUT)


def stalled(seconds: float) -> Retry:
    return Retry(GatewayError(504, f"The upstream stopped sending its answer for {seconds:g}s.",
                              code="upstream_timeout"), FailureCause.TIMEOUT)


def bad_response(message: str) -> Retry:
    return Retry(GatewayError(502, message, code="upstream_bad_response"), FailureCause.BAD_RESPONSE)


def clean(message: str) -> str:
    """An upstream's message without its internals: what a client may read."""
    cleaned = _PLACES.sub(lambda found: "<upstream>" if found.group("url") else "<path>", _CODE.sub("", message))
    return re.sub(r"\s{2,}", " ", re.sub(r"\s+([,.;)])", r"\1", cleaned)).strip(" :")


def refusal(status: int, raw: bytes, model: str) -> GatewayError:
    """An upstream's error answer (OpenAI-shaped or not) as one the client may read; the whole text is logged."""
    message = ""
    etype: str | None = None
    code: str | None = None
    try:
        data = orjson.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            etype = err.get("type") if isinstance(err.get("type"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        message = raw[:300].decode("utf-8", "replace").strip()
    shown = clean(message)
    if shown != message:
        log.warning("model %s: the upstream answered %d: %s", model, status, message)
    if not shown:
        shown = f"upstream answered HTTP {status}"
    if status >= 500:
        return GatewayError(502, f"upstream error: {shown}", type="upstream_error", code=code or "upstream_error")
    return GatewayError(status, shown, type=etype, code=code)
