"""Failures talking to an upstream, mapped to what the client hears — in one place.

httpx raises its own exception hierarchy (``ConnectError``, ``ReadError``, ``RemoteProtocolError``, the
timeouts…); the proxy needs to know two things of each: what the client is told (an OpenAI error with a status
and a code), and whether another model (or node) may take over. Before any content reached the client every
failure here is a :class:`~app.core.errors.Retry`:

  ConnectError, ConnectTimeout   503 upstream_unavailable  cause "connect" (transport: says nothing of the model)
  any other httpx.HTTPError      502 upstream_error        cause "broken"
  no first byte in time          504 upstream_timeout      cause "timeout"
  not the format asked for       502 upstream_bad_response cause "bad_response"

After content reached the client the relay ends the stream with one error event instead (``app.proxy.relay``).
"""

from __future__ import annotations

import httpx

from app.core.errors import GatewayError, Retry


def transport_failure(model: str, exc: httpx.HTTPError) -> Retry:
    """An httpx error while sending or before the answer's first byte."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Retry(GatewayError(503, f"Upstream unreachable for model '{model}': {exc}",
                                  code="upstream_unavailable"), "connect", transport=True)
    return Retry(GatewayError(502, f"Upstream failed for model '{model}': {exc.__class__.__name__}: {exc}",
                              code="upstream_error"), "broken")


def broke_mid_answer(exc: httpx.HTTPError) -> Retry:
    """An httpx error while reading a JSON answer (nothing reached the client yet)."""
    return Retry(GatewayError(502, f"Upstream failed mid-response: {exc.__class__.__name__}",
                              code="upstream_error"), "broken")


def broke_mid_stream(exc: httpx.HTTPError) -> GatewayError:
    """An httpx error after a stream's first bytes reached the client: its last event."""
    return GatewayError(502, f"The upstream connection broke mid-stream ({exc.__class__.__name__}).",
                        code="upstream_error")


def sent_nothing(model: str, seconds: float) -> Retry:
    return Retry(GatewayError(504, f"Model '{model}' sent nothing for {seconds:g}s.", code="upstream_timeout"),
                 "timeout")


def stalled(seconds: float) -> Retry:
    return Retry(GatewayError(504, f"The upstream stopped sending its answer for {seconds:g}s.",
                              code="upstream_timeout"), "timeout")


def bad_response(message: str) -> Retry:
    return Retry(GatewayError(502, message, code="upstream_bad_response"), "bad_response")
