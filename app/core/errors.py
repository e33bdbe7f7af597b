"""OpenAI-format errors: every failure a client sees is ``{"error": {message, type, param, code}}``.

Clients (the official SDKs, LangChain) parse this shape to raise typed exceptions, so the gateway
never answers with anything else, whatever went wrong.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson


class GatewayError(Exception):
    """An error with the HTTP status and OpenAI error fields the client should see."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or default_type(status)
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.detail = detail  # more fields of the error object (what was considered, the command that fixes it)

    def body(self) -> dict[str, Any]:
        found = error_body(self.message, self.type, self.code, self.param)
        if self.detail:
            found["error"].update(self.detail)
        return found

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.body())


def default_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    if status == 503:
        return "service_unavailable"
    if status == 504:
        return "timeout_error"
    return "api_error"


def error_body(
    message: str, type: str = "api_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


class FailureCause(StrEnum):
    """Why an attempt failed before content reached the client: what the breaker, outlier ejection and the
    fallback metric decide by (by type, never by parsing a label)."""

    CONNECT = "connect"  # the upstream could not be reached: says nothing of the model
    BROKEN = "broken"  # the connection broke before the answer's first byte
    TIMEOUT = "timeout"  # no first byte (or no next one) in time
    BAD_RESPONSE = "bad_response"  # not the format asked for
    LOAD_FAILED = "load_failed"  # the runtime could not load the model
    MISSING = "missing"  # the upstream does not have the model (404)
    COOLING = "cooling"  # the breaker is open (or its probe out) for the model
    BUSY = "busy"  # the upstream said 429: busy, not failing
    UPSTREAM_ERROR = "upstream_error"  # the upstream answered 5xx

    @property
    def failing(self) -> bool:
        """Does it count against the model (breaker) or the node (outlier ejection)? Busy and cooling do not."""
        return self not in (FailureCause.BUSY, FailureCause.COOLING)

    @property
    def outlier(self) -> bool:
        """A node that answers, but not in time or not well (Envoy's consecutive gateway failures)."""
        return self in (FailureCause.TIMEOUT, FailureCause.BAD_RESPONSE, FailureCause.UPSTREAM_ERROR)


class Retry(Exception):
    """A failure before any content reached the client: the next candidate model may take over.

    ``cause`` says why (:class:`FailureCause`); ``status`` is the upstream's HTTP status when it answered one;
    ``transport`` says the upstream could not be reached at all, which tells the circuit breaker nothing about the
    model itself. ``label`` is the short text for metrics and headers (``timeout``, ``http_500``, …).
    """

    def __init__(self, error: GatewayError, cause: FailureCause, *, status: int = 0, transport: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.cause = cause
        self.status = status
        self.transport = transport

    @property
    def label(self) -> str:
        return f"http_{self.status}" if self.status else self.cause.value


class TracingUnavailable(RuntimeError):
    """Tracing was asked for, but the OpenTelemetry packages are not installed."""


# --- named errors: each built in one place ---------------------------------------------------------------------


def unauthorized() -> GatewayError:
    return GatewayError(401, "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
                        code="invalid_api_key", headers={"www-authenticate": "Bearer"})


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than {limit} bytes.", code="body_too_large")


def file_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The file is larger than {limit} bytes (GATEWAY_MAX_FILE_BYTES).", code="file_too_large",
                        param="file")


def insufficient_storage(what: str) -> GatewayError:
    """The state directory's disk (or Redis's memory) has no room for ``what``: nothing of it was kept."""
    return GatewayError(507, f"The gateway's state store is full: {what} cannot be kept now. Free space under "
                        "GATEWAY_STATE_DIR (or Redis's memory) and try again.", code="insufficient_storage",
                        type="server_error", headers={"retry-after": "30"})


def request_timeout(seconds: float) -> GatewayError:
    """The client stopped sending its request body (``GATEWAY_BODY_TIMEOUT``)."""
    return GatewayError(408, f"The request body did not arrive: nothing came for {seconds:g}s "
                        "(GATEWAY_BODY_TIMEOUT).", code="request_timeout", headers={"connection": "close"})


def store_unavailable() -> GatewayError:
    """The state store (SQLite or Redis) cannot be reached: the one 503 every route gives for it."""
    return GatewayError(503, "The state store is unavailable (stored responses, files, batches cannot be read or "
                        "written now); try again shortly.", code="state_store_unavailable",
                        headers={"retry-after": "2"})


def shutting_down() -> GatewayError:
    return GatewayError(503, "The gateway is shutting down.", code="shutting_down")


def total_timeout(seconds: float | None = None) -> GatewayError:
    """The request's whole deadline (``GATEWAY_TOTAL_TIMEOUT``) passed."""
    said = f" ({seconds:g}s)" if seconds is not None else ""
    return GatewayError(504, f"The request took longer than the total timeout{said}.", code="upstream_timeout")


NO_RETRY = {"x-should-retry": "false"}  # the OpenAI SDKs retry 5xx unless told: asking again cannot help


def not_in_registry(name: str) -> GatewayError:
    return GatewayError(404, f"Model '{name}' is not in the registry.", code="model_not_found", param="model")
