"""The OpenTelemetry side of ``app.core.tracing`` (imported only when tracing is on).

A request is a ``SERVER`` span named ``{gen_ai.operation.name} {model}``, continuing an incoming W3C
``traceparent``; under it one ``CLIENT`` span per attempt (a fallback is a second attempt), and under each
attempt ``queue`` (admission), ``model load`` (when it waited for one) and ``first token`` (from sending to the
first content). Every hop — a node behind a front, the runtime — gets the attempt's ``traceparent``. Attributes
follow the GenAI semantic conventions (``gen_ai.*``) plus the gateway's own (``gateway.*``); the prompt only with
``GATEWAY_LOG_PROMPTS``. The SDK reads the usual ``OTEL_*`` variables: service name, sampler, exporter, batching.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import __version__
from app.core.settings import Settings

_INT64 = 2**63
_SYSTEMS = {"foundry": "foundry_local", "openai": "openai"}


def exporter_type() -> type[SpanExporter]:
    """The OTLP exporter for ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` (HTTP unless grpc is asked for)."""
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            from app.core.tracing import TracingUnavailable

            raise TracingUnavailable("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc; "
                                     "the [otel] extra has the HTTP exporter (http/protobuf)") from None
        found: type[SpanExporter] = GrpcExporter
        return found
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter


class OtelTracer:
    """The gateway's own TracerProvider (not the global one: FastAPI's and other libraries' telemetry stays as
    the user set it), batching spans to the OTLP exporter on a background thread."""

    def __init__(self, settings: Settings, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.version": __version__})  # + OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "foundry-gateway"}))
        self.provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        self.provider.add_span_processor(BatchSpanProcessor(exporter or exporter_type()()))
        self.tracer = self.provider.get_tracer("foundry-gateway", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.system = "foundry_gateway" if settings.nodes else _SYSTEMS.get(settings.upstream_kind, "openai")
        self.log_prompts = settings.log_prompts

    def request(self, headers: Mapping[bytes, bytes], operation: str, route: str, request_id: str) -> OtelRequest:
        carrier = {name: headers[raw].decode("latin-1") for name, raw in (("traceparent", b"traceparent"),
                                                                         ("tracestate", b"tracestate"))
                   if raw in headers}
        context = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(operation, context=context, kind=SpanKind.SERVER, attributes={
            "gen_ai.operation.name": operation, "gen_ai.system": self.system, "gen_ai.provider.name": self.system,
            "http.request.method": "POST", "http.route": route, "gateway.request_id": request_id})
        return OtelRequest(self, span, operation)

    def shutdown(self) -> None:
        self.provider.shutdown()  # what is batched is exported before the process ends


class OtelRequest:
    """One request's spans. Phases are recorded after the fact with the proxy's own timestamps, so the hot path
    only reads the clock; nothing is recorded for a trace the sampler dropped, but its ids still propagate."""

    __slots__ = ("attempt", "exemplar", "offset", "operation", "owner", "span", "trace_id")

    def __init__(self, owner: OtelTracer, span: trace.Span, operation: str) -> None:
        self.owner = owner
        self.operation = operation
        self.span = span
        context = span.get_span_context()
        self.trace_id = format(context.trace_id, "032x")
        self.exemplar = {"trace_id": self.trace_id} if context.trace_flags.sampled else None
        self.attempt: trace.Span | None = None
        self.offset = time.time_ns() - time.perf_counter_ns()  # the proxy's clock (perf_counter) to epoch ns

    def _ns(self, clock: float) -> int:
        return self.offset + int(clock * 1e9)

    def headers(self) -> list[tuple[str, str]]:
        context = (self.attempt or self.span).get_span_context()
        found = [("traceparent", f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}")]
        if context.trace_state:
            found.append(("tracestate", context.trace_state.to_header()))
        return found

    def attempt_begin(self, model: str, node: str | None) -> None:
        if not self.span.is_recording():
            return
        attributes: dict[str, Any] = {"gen_ai.request.model": model, "gen_ai.system": self.owner.system}
        if node:
            attributes["gateway.node"] = node
        self.attempt = self.owner.tracer.start_span(f"attempt {model}", context=trace.set_span_in_context(self.span),
                                                    kind=SpanKind.CLIENT, attributes=attributes)

    def phase(self, name: str, start: float, end: float) -> None:
        if self.attempt is None:
            return
        span = self.owner.tracer.start_span(name, context=trace.set_span_in_context(self.attempt),
                                            start_time=self._ns(start))
        span.end(end_time=self._ns(end))

    def attempt_end(self, ex: Any, error: BaseException | None) -> None:
        attempt, self.attempt = self.attempt, None
        if attempt is None:
            return
        if ex.sent and ex.upstream_id:  # ex.sent is this attempt's (an earlier one's upstream_id may linger)
            attempt.set_attribute("gen_ai.response.model", ex.upstream_id)
        if ex.ttft and ex.sent_at:
            first = self.owner.tracer.start_span("first token", context=trace.set_span_in_context(attempt),
                                                 start_time=self._ns(ex.sent_at))
            first.end(end_time=self._ns(ex.started + ex.ttft))
        if isinstance(error, asyncio.CancelledError):  # the client left: not the upstream's failure
            attempt.set_attribute("gateway.client_left", True)
        elif error is not None:
            attempt.set_attribute("error.type", getattr(error, "cause", "") or type(error).__name__)
            attempt.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        elif ex.broken:  # the upstream failed after content reached the client
            attempt.set_attribute("error.type", "broken")
            attempt.set_status(Status(StatusCode.ERROR, ex.error[:200] or "the upstream failed mid-response"))
        attempt.end()

    def finish(self, ex: Any) -> None:
        span = self.span
        if span.is_recording():
            span.set_attributes(_attributes(ex, self.owner.log_prompts))
            if ex.aborted:
                span.set_attribute("gateway.client_left", True)
            elif ex.status >= 500 or ex.status == 0:
                span.set_status(Status(StatusCode.ERROR, ex.error[:200] or f"HTTP {ex.status}"))
            if ex.entry is not None:
                span.update_name(f"{self.operation} {ex.entry.name}")  # GenAI: "{operation} {model}"
        span.end()


def _attributes(ex: Any, log_prompts: bool) -> dict[str, Any]:
    body: dict[str, Any] = ex.body or {}
    found: dict[str, Any] = {"http.response.status_code": ex.status, "gateway.stream": bool(ex.stream)}
    requested = body.get("model")
    if isinstance(requested, str):
        found["gen_ai.request.model"] = requested
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(name), int) and -_INT64 <= body[name] < _INT64:  # OTLP ints are 64-bit
            found["gen_ai.request.max_tokens"] = body[name]
            break
    if isinstance(body.get("temperature"), int | float):
        found["gen_ai.request.temperature"] = float(body["temperature"])
    if ex.upstream_id:
        found["gen_ai.response.model"] = ex.upstream_id
    usage = ex.usage or {}
    for key, name in (("prompt_tokens", "input_tokens"), ("input_tokens", "input_tokens"),
                      ("completion_tokens", "output_tokens"), ("output_tokens", "output_tokens")):
        if isinstance(usage.get(key), int):
            found[f"gen_ai.usage.{name}"] = usage[key]
    if ex.ttft:
        found["gen_ai.server.time_to_first_token"] = round(ex.ttft, 6)
    for name, value in (("gateway.task", ex.task), ("gateway.route.reason", ex.route.reason if ex.route else None),
                        ("gateway.model", ex.entry.name if ex.entry else None), ("gateway.node", ex.node),
                        ("gateway.key", ex.key.name if ex.key else None), ("gateway.cache", ex.cache),
                        ("gateway.priority", ex.priority), ("gateway.fallbacks", ex.fallbacks or None)):
        if value is not None:
            found[name] = value
    if ex.queue_wait:
        found["gateway.queue_wait_s"] = round(ex.queue_wait, 6)
    if ex.load_wait:
        found["gateway.load_wait_s"] = round(ex.load_wait, 6)
    if ex.error:
        found["error.type"] = ex.cause or "error"
    if log_prompts and body:
        prompt = body.get("messages") or body.get("input") or body.get("prompt")
        if prompt is not None:
            found["gen_ai.prompt"] = orjson.dumps(prompt).decode()[:8000]
    return found
