"""The OpenTelemetry side of ``app.core.tracing`` (imported only when tracing is on).

A request is a ``SERVER`` span named ``{gen_ai.operation.name} {model}``, continuing an incoming W3C
``traceparent``; under it one ``CLIENT`` span per attempt (a fallback is a second attempt), and under each
attempt ``queue`` (admission), ``model load`` (when it waited for one) and ``first token`` (from sending to the
first content). Every hop — a node behind a front, the runtime — gets the attempt's ``traceparent``. Attributes
follow the GenAI semantic conventions (``gen_ai.*``) plus the gateway's own (``gateway.*``); the prompt only with
``GATEWAY_LOG_PROMPTS``. The SDK reads the usual ``OTEL_*`` variables: service name, sampler, exporter, batching.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, StaticSampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import __version__
from app.core.errors import TracingUnavailable


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
            raise TracingUnavailable("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc; "
                                     "the [otel] extra has the HTTP exporter (http/protobuf)") from None
        found: type[SpanExporter] = GrpcExporter
        return found
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter


_LOW_64 = (1 << 64) - 1  # what TraceIdRatioBased compares with its bound


class OtelTracer:
    """The gateway's own TracerProvider (not the global one: FastAPI's and other libraries' telemetry stays as
    the user set it), batching spans to the OTLP exporter on a background thread."""

    def __init__(self, system: str, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.version": __version__})  # + OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "foundry-gateway"}))
        self.ids = _ChosenIds()
        self.provider = TracerProvider(resource=resource, id_generator=self.ids)  # sampler: OTEL_TRACES_SAMPLER
        self.provider.add_span_processor(BatchSpanProcessor(exporter or exporter_type()()))
        self.tracer = self.provider.get_tracer("foundry-gateway", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.system = system
        self.root_bound = _root_bound(self.provider.sampler)

    def request(self, headers: Mapping[bytes, bytes], operation: str, route: str,
                request_id: str) -> OtelRequest | DroppedRequest:
        carrier = {name: headers[raw].decode("latin-1") for name, raw in (("traceparent", b"traceparent"),
                                                                         ("tracestate", b"tracestate"))
                   if raw in headers}
        if not carrier and self.root_bound is not None and not trace.get_current_span().get_span_context().is_valid:
            # a new trace, its sampling a function of its id: decided here, so the ~90% dropped at 10% cost two
            # random numbers, not the SDK's span machinery; a kept one gets that same id from the SDK
            trace_id = random.getrandbits(128) or 1
            if trace_id & _LOW_64 >= self.root_bound:
                return DroppedRequest(trace_id)
            self.ids.next_trace_id = trace_id
        context = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(operation, context=context, kind=SpanKind.SERVER, attributes={
            "gen_ai.operation.name": operation, "gen_ai.system": self.system, "gen_ai.provider.name": self.system,
            "http.request.method": "POST", "http.route": route, "gateway.request_id": request_id})
        self.ids.next_trace_id = 0  # used by this span, or (a parent after all) by none: never by the next
        return OtelRequest(self, span, operation)

    def shutdown(self) -> None:
        self.provider.shutdown()  # what is batched is exported before the process ends


class DroppedRequest:
    """A new trace the sampler drops: its ids still travel (``traceparent`` with the sampled flag off, so the
    next hop drops it too), nothing is recorded."""

    __slots__ = ("span_id", "trace_id")
    exemplar = None
    recording = False

    def __init__(self, trace_id: int) -> None:
        self.trace_id = format(trace_id, "032x")
        self.span_id = random.getrandbits(64) or 1

    def headers(self) -> list[tuple[str, str]]:
        return [("traceparent", f"00-{self.trace_id}-{self.span_id:016x}-00")]

    def attempt_begin(self, model: str, node: str | None) -> None:
        pass

    def phase(self, name: str, start: float, end: float) -> None:
        pass

    def attempt_end(self, *, response_model: str | None, first_token: tuple[float, float] | None,
                    error_type: str | None, error: str, client_left: bool) -> None:
        pass

    def finish(self, attributes: Mapping[str, Any], *, name: str | None, error: str | None, client_left: bool) -> None:
        pass


class _ChosenIds(RandomIdGenerator):
    """Random ids, except the trace id the tracer already chose (and sampled by) for the span it starts now."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_trace_id(self) -> int:
        chosen, self.next_trace_id = self.next_trace_id, 0
        return chosen or super().generate_trace_id()


def _root_bound(sampler: Sampler) -> int | None:
    """For a sampler that keeps a new trace by its id alone (``traceidratio``, ``parentbased_traceidratio``,
    ``always_off``, their parent-based forms): the bound the id's low 64 bits must be under; else None."""
    root = getattr(sampler, "_root", sampler) if isinstance(sampler, ParentBased) else sampler
    if isinstance(root, TraceIdRatioBased):
        return int(root.bound)
    if isinstance(root, StaticSampler) and root._decision is Decision.DROP:  # always_off
        return 0
    return None


class OtelRequest:
    """One request's spans. Phases are recorded after the fact with the proxy's own timestamps, so the hot path
    only reads the clock; nothing is recorded for a trace the sampler dropped, but its ids still propagate."""

    __slots__ = ("attempt", "exemplar", "offset", "operation", "owner", "recording", "span", "trace_id")

    def __init__(self, owner: OtelTracer, span: trace.Span, operation: str) -> None:
        self.owner = owner
        self.operation = operation
        self.span = span
        context = span.get_span_context()
        self.trace_id = format(context.trace_id, "032x")
        self.exemplar = {"trace_id": self.trace_id} if context.trace_flags.sampled else None
        self.recording = span.is_recording()
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

    def attempt_end(self, *, response_model: str | None, first_token: tuple[float, float] | None,
                    error_type: str | None, error: str, client_left: bool) -> None:
        attempt, self.attempt = self.attempt, None
        if attempt is None:
            return
        if response_model:
            attempt.set_attribute("gen_ai.response.model", response_model)
        if first_token is not None:
            first = self.owner.tracer.start_span("first token", context=trace.set_span_in_context(attempt),
                                                 start_time=self._ns(first_token[0]))
            first.end(end_time=self._ns(first_token[1]))
        if client_left:  # the client left: not the upstream's failure
            attempt.set_attribute("gateway.client_left", True)
        elif error_type is not None:
            attempt.set_attribute("error.type", error_type)
            attempt.set_status(Status(StatusCode.ERROR, error[:200]))
        attempt.end()

    def finish(self, attributes: Mapping[str, Any], *, name: str | None, error: str | None, client_left: bool) -> None:
        span = self.span
        if span.is_recording():
            span.set_attributes(attributes)
            if client_left:
                span.set_attribute("gateway.client_left", True)
            elif error is not None:
                span.set_status(Status(StatusCode.ERROR, error[:200]))
            if name is not None:
                span.update_name(f"{self.operation} {name}")  # GenAI: "{operation} {model}"
        span.end()
