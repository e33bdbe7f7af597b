"""OpenTelemetry traces, opt-in by the standard variables: set ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and the gateway exports a trace per request with the GenAI semantic
conventions (``app.core.otel``, the ``foundry-gateway[otel]`` extra). ``OTEL_SERVICE_NAME``,
``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``/``_ARG`` and the rest are
read by the SDK as everywhere; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off.

Unset, this module imports nothing of OpenTelemetry and the proxy's hooks are skipped on a ``None``: tracing
costs nothing. The proxy sees only :class:`RequestTrace`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol

from app.core.errors import TracingUnavailable


class RequestTrace(Protocol):
    """One request's trace: its server span, the spans of each attempt, and what goes to the next hop."""

    trace_id: str
    exemplar: dict[str, str] | None  # for Prometheus histograms: the trace id, when the trace is kept
    recording: bool  # the sampler kept it: what is recorded is worth building (else only the ids travel)

    def headers(self) -> list[tuple[str, str]]:
        """``traceparent`` (and ``tracestate``) for the next hop: the current attempt as its parent."""

    def attempt_begin(self, model: str, node: str | None) -> None: ...

    def phase(self, name: str, start: float, end: float) -> None: ...

    def attempt_end(self, *, response_model: str | None, first_token: tuple[float, float] | None,
                    error_type: str | None, error: str, client_left: bool) -> None:
        """The attempt's span ends: the model that answered, when the first token came (sent, first: the proxy's
        clock), the failure (``error_type`` None: none)."""

    def finish(self, attributes: Mapping[str, Any], *, name: str | None, error: str | None, client_left: bool) -> None:
        """The request's span ends with its attributes, renamed ``{operation} {name}`` when the model is known;
        ``error``: the span's error status (None: ok)."""


class Tracer(Protocol):
    def request(self, headers: Mapping[bytes, bytes], operation: str, route: str, request_id: str) -> RequestTrace:
        ...

    def shutdown(self) -> None: ...


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(system: str) -> Tracer | None:
    """The tracer when the environment asks for traces, else None (and no OpenTelemetry import); ``system``: the
    ``gen_ai.system`` of the spans (what the upstream is)."""
    if not enabled():
        return None
    tracer: Tracer = _otel().OtelTracer(system)
    return tracer


def problem() -> str | None:
    """Why the traces the environment asks for cannot be exported, or None: ``serve`` says it in one line
    before it binds a port."""
    if not enabled():
        return None
    try:
        _otel().exporter_type()
    except TracingUnavailable as exc:
        return str(exc)
    except ImportError as exc:
        return f"OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed ({exc.name}): " \
            "pip install 'foundry-gateway[otel]', or unset it"
    return None


def _otel() -> ModuleType:
    try:
        from app.core import otel
    except ImportError as exc:
        raise TracingUnavailable(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc.name}): "
            "pip install 'foundry-gateway[otel]', or unset it") from None
    return otel
