"""``app.core.tracing``, ``app.core.otel`` and the proxy's trace observer on their own: when the environment turns
traces on, and what one request's trace holds — spans, parents, GenAI attributes, the traceparent for the next hop,
the exemplar — exported to the SDK's in-memory exporter."""

from __future__ import annotations

from typing import Any

import pytest

from app.access.keys import ApiKey
from app.core import tracing
from app.proxy.observers.trace import Trace
from app.proxy.outcome import CacheResult, Call, Outcome
from tests.helpers import require_module

require_module("opentelemetry.sdk")
from opentelemetry import trace as otel_trace  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from app.core.otel import OtelTracer  # noqa: E402

CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_SERVICE_NAME": "gateway"}, False),  # a name alone exports nothing
])
def test_traces_are_on_only_when_an_endpoint_is_set(env: dict[str, str], on: bool) -> None:
    assert tracing.enabled(env) is on


def outcome(**changes: Any) -> Outcome:
    """What the proxy's outcome holds at the end of a streamed request that worked."""
    fields: dict[str, Any] = {
        "call": Call("req-1", "chat", ApiKey(name="team-a", sha256="0"), "interactive", 0.0, 100.0, "slot-1"),
        "status": 200, "duration": 0.05, "aborted": False, "broken": False, "stream": True, "task": "chat",
        "model": "tiny-chat", "upstream_id": "tiny-chat-cpu", "node": None, "reason": "auto", "explanation": None,
        "fallbacks": 0, "cause": "", "error": "", "usage": {"prompt_tokens": 9, "completion_tokens": 6},
        "cache": CacheResult.MISS, "metered": False, "ttft": 0.012, "tpot": 0.0, "upstream_wait": 0.04,
        "queue_wait": 0.0005, "load_wait": 0.0, "trace_id": None, "exemplar": None,
        "body": {"model": "auto", "max_tokens": 20, "temperature": 0, "messages": [{"role": "user",
                                                                                    "content": "secret prompt"}]}}
    return Outcome(**{**fields, **changes})


OK_ATTEMPT: dict[str, Any] = {"response_model": "tiny-chat-cpu", "first_token": (100.001, 100.012),
                              "error_type": None, "error": "", "client_left": False}


def finish(request: Any, result: Outcome, log_prompts: bool = False) -> None:
    Trace(log_prompts).observe(result, request)


def traced(flags: str = "01", state: bytes = b"") -> tuple[OtelTracer, InMemorySpanExporter, Any]:
    exporter = InMemorySpanExporter()
    tracer = OtelTracer("foundry_local", exporter)
    headers = {b"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}".encode()}
    if state:
        headers[b"tracestate"] = state
    request = tracer.request(headers, "chat", "/v1/chat/completions", "req-1")
    return tracer, exporter, request


def test_one_request_is_a_server_span_over_an_attempt_and_its_phases() -> None:
    tracer, exporter, request = traced()
    assert request.trace_id == CALLER_TRACE and request.exemplar == {"trace_id": CALLER_TRACE}
    request.attempt_begin("tiny-chat", None)
    request.phase("queue", 100.0002, 100.0007)
    hop = dict(request.headers())  # what the runtime is sent: the attempt's span
    request.attempt_end(**OK_ATTEMPT)
    finish(request, outcome())
    tracer.shutdown()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"chat tiny-chat", "attempt tiny-chat", "queue", "first token"}
    server, attempt = spans["chat tiny-chat"], spans["attempt tiny-chat"]
    assert server.kind is SpanKind.SERVER and attempt.kind is SpanKind.CLIENT
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN
    assert attempt.parent is not None and attempt.parent.span_id == server.context.span_id
    for name in ("queue", "first token"):
        parent = spans[name].parent
        assert parent is not None and parent.span_id == attempt.context.span_id
    assert hop == {"traceparent": f"00-{CALLER_TRACE}-{attempt.context.span_id:016x}-01"}
    first = spans["first token"]
    assert first.start_time is not None and first.end_time is not None
    assert first.end_time - first.start_time == pytest.approx(11_000_000, abs=2_000)  # sent at +1 ms, first at +12
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "auto"
    assert attributes["gen_ai.response.model"] == "tiny-chat-cpu" and attributes["gen_ai.request.max_tokens"] == 20
    assert attributes["gen_ai.usage.input_tokens"] == 9 and attributes["gen_ai.usage.output_tokens"] == 6
    assert attributes["gateway.key"] == "team-a" and attributes["gateway.route.reason"] == "auto"
    assert attributes["gateway.cache"] == "miss" and "gateway.fallbacks" not in attributes
    assert not any("secret prompt" in str(value) for value in attributes.values())


def test_a_failed_attempt_is_an_error_span_and_the_prompt_only_with_log_prompts() -> None:
    tracer, exporter, request = traced()
    request.attempt_begin("tiny-chat", "node-1")
    request.attempt_end(**{**OK_ATTEMPT, "first_token": None, "error_type": "http_500", "error": "upstream 500"})
    finish(request, outcome(status=502, error="all models failed", cause="http_500"), log_prompts=True)
    tracer.shutdown()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    attempt, server = spans["attempt tiny-chat"], spans["chat tiny-chat"]
    assert attempt.status.status_code is StatusCode.ERROR and (attempt.attributes or {})["gateway.node"] == "node-1"
    assert "first token" not in spans  # no content came
    assert server.status.status_code is StatusCode.ERROR and (server.attributes or {})["error.type"] == "http_500"
    assert "secret prompt" in str((server.attributes or {})["gen_ai.prompt"])


def test_a_trace_the_caller_did_not_sample_records_nothing_but_still_propagates() -> None:
    tracer, exporter, request = traced(flags="00")
    assert request.exemplar is None  # no exemplar points at a trace nobody keeps
    request.attempt_begin("tiny-chat", None)
    [(name, value)] = request.headers()
    assert name == "traceparent" and value.startswith(f"00-{CALLER_TRACE}-") and value.endswith("-00")
    request.attempt_end(**OK_ATTEMPT)
    finish(request, outcome())
    tracer.shutdown()
    assert exporter.get_finished_spans() == ()


def test_a_client_that_left_is_said_not_an_error() -> None:
    tracer, exporter, request = traced()
    request.attempt_begin("tiny-chat", None)
    request.attempt_end(**{**OK_ATTEMPT, "client_left": True})
    finish(request, outcome(status=0, aborted=True))
    tracer.shutdown()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    for name in ("chat tiny-chat", "attempt tiny-chat"):
        assert spans[name].status.status_code is not StatusCode.ERROR
        assert (spans[name].attributes or {})["gateway.client_left"] is True


def test_the_callers_tracestate_travels_on_and_the_service_is_named() -> None:
    tracer, exporter, request = traced(state=b"vendor=abc,other=1")
    request.attempt_begin("tiny-chat", None)
    assert dict(request.headers())["tracestate"] == "vendor=abc,other=1"
    request.attempt_end(**OK_ATTEMPT)
    finish(request, outcome())
    tracer.shutdown()
    assert {span.resource.attributes["service.name"] for span in exporter.get_finished_spans()} == {"foundry-gateway"}


def test_odd_requests_and_attempts_are_told_as_they_were() -> None:
    tracer, exporter, request = traced()
    request.attempt_begin("model-a", None)  # refused before it reached the upstream: no response model
    request.attempt_end(response_model=None, first_token=None, error_type="RuntimeError", error="breaker open",
                        client_left=False)
    request.attempt_begin("model-b", None)  # content went out, then the upstream broke
    request.attempt_end(**{**OK_ATTEMPT, "error_type": "broken", "error": "the upstream closed the stream"})
    finish(request, outcome(body={"model": "auto", "max_tokens": 2**64 - 1}))  # valid JSON, too big for OTLP
    tracer.shutdown()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert "gen_ai.response.model" not in (spans["attempt model-a"].attributes or {})
    assert spans["attempt model-b"].status.status_code is StatusCode.ERROR
    assert "gen_ai.request.max_tokens" not in (spans["chat tiny-chat"].attributes or {})


def test_a_new_trace_is_sampled_by_its_id_and_a_dropped_one_costs_no_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracer decides a new trace's sampling itself, by the ratio sampler's rule: the dropped ones never reach
    the SDK (their ids still travel, flagged not sampled), the kept ones are the SDK's spans with that same id."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    exporter = InMemorySpanExporter()
    tracer = OtelTracer("foundry_local", exporter)
    assert tracer.root_bound == 1 << 63
    kept, dropped = [], []
    for i in range(200):
        request = tracer.request({}, "chat", "/v1/chat/completions", f"req-{i}")
        low = int(request.trace_id, 16) & ((1 << 64) - 1)
        if request.recording:
            assert low < tracer.root_bound and request.exemplar == {"trace_id": request.trace_id}
            kept.append(request.trace_id)
        else:
            assert low >= tracer.root_bound and request.exemplar is None
            [(name, value)] = request.headers()
            version, trace_id, span_id, flags = value.split("-")
            assert (name, version, trace_id, flags) == ("traceparent", "00", request.trace_id, "00")
            assert len(span_id) == 16 and int(span_id, 16)
            dropped.append(request.trace_id)
        request.attempt_begin("tiny-chat", None)
        finish(request, outcome())
    tracer.shutdown()
    assert kept and dropped  # 200 draws at one half
    assert sorted(format(span.context.trace_id, "032x") for span in exporter.get_finished_spans()) == sorted(kept)


def test_a_sampler_that_does_not_decide_by_id_alone_is_left_to_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    tracer = OtelTracer("foundry_local", InMemorySpanExporter())
    assert tracer.root_bound is None and tracer.request({}, "chat", "/v1/chat/completions", "r").recording
    tracer.shutdown()


def test_a_clients_4xx_is_not_an_error_span_a_5xx_is() -> None:
    tracer, exporter, request = traced()
    finish(request, outcome(status=404, error="Model 'x' is not in the registry."))
    _, _, failed = tracer, exporter, tracer.request({}, "chat", "/v1/chat/completions", "req-2")
    finish(failed, outcome(status=503, error="all models cooling down"))
    tracer.shutdown()
    codes = sorted(span.status.status_code.name for span in exporter.get_finished_spans())
    assert codes == ["ERROR", "UNSET"]


def test_a_new_request_inside_a_current_span_is_its_child_whatever_the_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another instrumentation's span is current (the app's own ASGI middleware): the request continues its trace
    and its sampling, it is not decided afresh by a new id."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    outer = OtelTracer("foundry_local", InMemorySpanExporter())  # the middleware's, keeping its traces
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")  # a new trace would always be dropped
    exporter = InMemorySpanExporter()
    tracer = OtelTracer("foundry_local", exporter)
    with otel_trace.use_span(outer.tracer.start_span("middleware"), end_on_exit=True) as parent:
        request = tracer.request({}, "chat", "/v1/chat/completions", "req-1")
        assert request.recording and request.trace_id == format(parent.get_span_context().trace_id, "032x")
        finish(request, outcome())
    fresh = tracer.request({}, "chat", "/v1/chat/completions", "req-2")  # no current span, ratio 0: dropped
    assert not fresh.recording and fresh.trace_id != request.trace_id
    tracer.shutdown()
    outer.shutdown()
