"""OpenTelemetry traces, received by an in-test OTLP/HTTP receiver (``tests.fakes.otlp``) and decoded with
``opentelemetry-proto``: one streamed request is a server span continuing the caller's ``traceparent``, an attempt
span under it and queue and first-token spans under that, with GenAI attributes and no prompt; the upstream gets the
attempt's ``traceparent`` and the access log the trace id; a fallback is two attempt spans; a front and its node
are one trace; the trace id is an exemplar in the OpenMetrics exposition; unset, nothing is exported and the
gateway imports nothing of OpenTelemetry; asked for but not installed, ``serve`` says so in one line."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, free_port, require_module, require_program, wait_for, write_registry

require_module("opentelemetry.sdk")
from tests.fakes.otlp import OtlpReceiver  # noqa: E402 - needs opentelemetry-proto

REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}, {"name": "chat-b", "task": "chat", "min_ram_gb": 1}]
SERVER, CLIENT = 2, 3  # OTLP span kinds
ERROR = 2  # OTLP status code


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as found:
        yield found


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(models=["chat-a", "chat-b"]) as up:
        yield up


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(tmp_path_factory.mktemp("tracing") / "models.json", REGISTRY)


def otel_env(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_TRACES_SAMPLER": "parentbased_always_on"}


@pytest.fixture(scope="module")
def gateway(receiver: OtlpReceiver, upstream: UpstreamProcess, registry: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    env = {**FAKE_ENV, **otel_env(receiver, "gateway"), "GATEWAY_ACCESS_LOG": "true", "GATEWAY_CACHE": "off"}
    with GatewayProcess(upstream=upstream.url, registry=registry, env=env, log_path=log) as gw:
        gw.wait_ready()
        yield gw


def traced(trace_id: str | None = None) -> tuple[str, str, str]:
    """A caller's ``traceparent``: (header, trace id, span id)."""
    trace_id, span_id = trace_id or secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def spans_of(receiver: OtlpReceiver, trace_id: str, until: Any) -> list[dict[str, Any]]:
    assert receiver.wait_for(lambda spans: until([s for s in spans if s["trace_id"] == trace_id]), timeout=15), \
        [s["name"] for s in receiver.spans if s["trace_id"] == trace_id]
    return [s for s in receiver.spans if s["trace_id"] == trace_id]


def one(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s["name"], s["parent"]) for s in spans])
    return found[0]


def test_a_streamed_request_is_a_trace_with_genai_attributes(gateway: GatewayProcess, upstream: UpstreamProcess,
                                                             receiver: OtlpReceiver) -> None:
    header, trace_id, caller_span = traced()
    upstream.configure(chunks=6, chunk_delay_ms=5)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers={"traceparent": header}, timeout=30,
                      json={"model": "chat-a", "messages": [{"role": "user", "content": "secret prompt"}],
                            "max_tokens": 20, "stream": True}) as response:
        assert response.status_code == 200 and response.read().rstrip().endswith(b"[DONE]")
    spans = spans_of(receiver, trace_id, lambda found: {"first token", "queue"} <= {s["name"] for s in found}
                     and any(s["kind"] == SERVER for s in found))
    server = one(spans, kind=SERVER)
    assert server["parent"] == caller_span and server["name"] == "chat chat-a" and server["service"] == "gateway"
    attributes = server["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "chat-a"
    assert attributes["gen_ai.response.model"] == "chat-a" and attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.max_tokens"] == 20 and attributes["gen_ai.usage.output_tokens"] == 6
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.server.time_to_first_token"] > 0
    assert attributes["gateway.task"] == "chat" and attributes["gateway.route.reason"] == "pinned"
    assert attributes["http.response.status_code"] == 200
    assert "secret prompt" not in json.dumps(spans)  # no prompt text without GATEWAY_LOG_PROMPTS
    attempt = one(spans, kind=CLIENT)
    assert attempt["parent"] == server["span_id"] and attempt["name"] == "attempt chat-a"
    for name in ("queue", "first token"):
        child = one(spans, name=name)
        assert child["parent"] == attempt["span_id"] and attempt["start"] <= child["start"] <= child["end"]
    assert server["start"] <= attempt["start"] and attempt["end"] <= server["end"]
    # the upstream got the attempt's traceparent; the access log has the trace id
    assert f"00-{trace_id}-{attempt['span_id']}-01" in upstream.stats()["traceparents"]
    assert gateway.log_path is not None
    logged = [json.loads(line) for line in gateway.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("trace_id") == trace_id for line in logged)


def test_a_fallback_is_two_attempt_spans(gateway: GatewayProcess, upstream: UpstreamProcess,
                                         receiver: OtlpReceiver) -> None:
    header, trace_id, _ = traced()
    upstream.fault("status", count=1, model="chat-a", status=500)
    answer = httpx.post(f"{gateway.base_url}/chat/completions", headers={"traceparent": header, "X-Task": "chat"},
                        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
                        timeout=30)
    assert answer.status_code == 200 and answer.headers["x-gateway-model"] == "chat-b"
    spans = spans_of(receiver, trace_id, lambda found: sum(s["kind"] == CLIENT for s in found) == 2
                     and any(s["kind"] == SERVER for s in found))
    server = one(spans, kind=SERVER)
    first, second = sorted((s for s in spans if s["kind"] == CLIENT), key=lambda s: s["start"])
    assert (first["name"], second["name"]) == ("attempt chat-a", "attempt chat-b")
    assert first["parent"] == second["parent"] == server["span_id"]
    assert first["status"] == ERROR and second["status"] != ERROR
    assert server["attributes"]["gateway.fallbacks"] == 1 and server["name"] == "chat chat-b"


def test_a_front_and_its_node_are_one_trace(receiver: OtlpReceiver, upstream: UpstreamProcess, registry: Path,
                                            tmp_path: Path) -> None:
    node_env = {**FAKE_ENV, **otel_env(receiver, "node"), "GATEWAY_CACHE": "off"}
    with GatewayProcess(upstream=upstream.url, registry=registry, env=node_env, log_path=tmp_path / "node.log") as node:
        node.wait_ready()
        front_env = {**otel_env(receiver, "front"), "GATEWAY_NODES": node.url, "GATEWAY_NODE_POLL_INTERVAL": "0.2",
                     "GATEWAY_CACHE": "off"}
        with GatewayProcess(registry=registry, env=front_env, log_path=tmp_path / "front.log") as front:
            front.wait_ready()
            header, trace_id, caller_span = traced()
            answer = httpx.post(f"{front.base_url}/chat/completions", headers={"traceparent": header}, timeout=30,
                                json={"model": "chat-a", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 8})
            assert answer.status_code == 200
            spans = spans_of(receiver, trace_id, lambda found: {s["service"] for s in found if s["kind"] == SERVER}
                             == {"front", "node"})
    front_server = one(spans, kind=SERVER, service="front")
    front_attempt = one(spans, kind=CLIENT, service="front")
    node_server = one(spans, kind=SERVER, service="node")
    assert front_server["parent"] == caller_span and front_attempt["parent"] == front_server["span_id"]
    assert node_server["parent"] == front_attempt["span_id"]  # the node continued the front's attempt
    assert front_attempt["attributes"]["gateway.node"] and front_server["attributes"]["gen_ai.system"] == \
        "foundry_gateway"
    assert one(spans, kind=CLIENT, service="node")["parent"] == node_server["span_id"]


def test_the_trace_id_is_an_exemplar_in_openmetrics(gateway: GatewayProcess, receiver: OtlpReceiver) -> None:
    header, trace_id, _ = traced()
    assert httpx.post(f"{gateway.base_url}/chat/completions", headers={"traceparent": header}, timeout=30, json={
        "model": "chat-a", "messages": [{"role": "user", "content": "hi"}], "stream": True}).status_code == 200
    metrics = httpx.get(f"{gateway.url}/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=10)
    assert metrics.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [line for line in metrics.text.splitlines() if f'trace_id="{trace_id}"' in line]
    assert any(line.startswith("gateway_time_to_first_token_seconds_bucket") for line in exemplars), exemplars
    assert any(line.startswith("gateway_request_duration_seconds_bucket") for line in exemplars)
    plain = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert plain.headers["content-type"].startswith("text/plain") and "trace_id" not in plain.text


def test_nothing_is_exported_or_imported_when_unset(receiver: OtlpReceiver, upstream: UpstreamProcess,
                                                    registry: Path) -> None:
    before = receiver.exports
    with GatewayProcess(upstream=upstream.url, registry=registry, env=FAKE_ENV) as gw:
        header, _, _ = traced()
        assert httpx.post(f"{gw.base_url}/chat/completions", headers={"traceparent": header}, timeout=30, json={
            "model": "chat-a", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert receiver.exports == before
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # FastAPI imports the OpenTelemetry API itself (its own telemetry, off while no provider is configured):
    # the gateway must add nothing to that — no SDK, no exporter, not app.core.otel
    probe = ("import sys, json; import fastapi; ours = lambda: sorted(m for m in sys.modules "
             "if m.startswith('opentelemetry') or m == 'app.core.otel'); before = ours(); "
             "from app.server.app import create_app; create_app(); print(json.dumps([before, ours()]))")
    shown = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**env, "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_STATE_DIR": str(registry.parent)})
    assert shown.returncode == 0, shown.stderr
    with_fastapi, with_gateway = json.loads(shown.stdout.strip().splitlines()[-1])
    assert with_gateway == with_fastapi
    assert not any(m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")) for m in with_gateway)


@pytest.mark.parametrize("missing", ["opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http.trace_exporter"])
def test_serve_says_in_one_line_that_tracing_is_not_installed(missing: str, registry: Path) -> None:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "GATEWAY_ENV_FILE": "/nonexistent",
           "GATEWAY_STATE_DIR": str(registry.parent)}
    argv = ["serve", "--port", "9", "--upstream", "http://127.0.0.1:9", "--registry", str(registry)]
    run = f"import sys; sys.modules[{missing!r}] = None; from app.cli.main import main; sys.exit(main({argv!r}))"
    shown = subprocess.run([sys.executable, "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 2, shown.stderr
    assert shown.stderr.strip().splitlines() == [
        shown.stderr.strip()] and "pip install 'foundry-gateway[otel]'" in shown.stderr, shown.stderr


def test_real_prometheus_keeps_the_trace_id_of_a_request(gateway: GatewayProcess, tmp_path: Path) -> None:
    """Prometheus with exemplar storage scrapes the traced gateway (OpenMetrics) and answers the trace id of a
    streamed request from ``query_exemplars`` — what Grafana's exemplar dots are made of."""
    require_program("prometheus")
    header, trace_id, _ = traced()
    assert httpx.post(f"{gateway.base_url}/chat/completions", headers={"traceparent": header}, timeout=30, json={
        "model": "chat-a", "messages": [{"role": "user", "content": "hi"}], "stream": True}).status_code == 200
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: gateway\n"
                      f"    static_configs: [{{targets: ['{gateway.url.removeprefix('http://')}']}}]\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found: list[str] = []

    def kept() -> bool:
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query_exemplars", timeout=5, params={
                "query": "gateway_time_to_first_token_seconds_bucket", "start": time.time() - 300,
                "end": time.time() + 60}).json()
        except (httpx.HTTPError, ValueError):  # not listening yet
            return False
        found[:] = [e["labels"].get("trace_id", "") for series in answer.get("data") or []
                    for e in series["exemplars"]]
        return trace_id in found

    try:
        assert wait_for(kept, timeout=30, interval=0.5), found
    finally:
        prom.terminate()
        prom.wait(timeout=10)


def test_the_config_examples_hold_together(gateway: GatewayProcess) -> None:
    """The Grafana panel asks for exemplars of metrics the gateway exports; the Collector's pipeline uses only
    the components it defines and takes OTLP over HTTP, what the gateway sends."""
    exported = {family.name for family in text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics").text)}
    panels = json.loads((ROOT / "config/grafana-exemplars.json").read_text())["panels"]
    targets = [target for panel in panels for target in panel["targets"]]
    assert any(target.get("exemplar") for target in targets)
    used = {name.removesuffix("_bucket") for t in targets for name in re.findall(r"\bgateway_[a-z_]+", t["expr"])}
    assert used and used <= exported, used - exported
    collector = yaml.safe_load((ROOT / "config/otel-collector.yaml").read_text())
    pipeline = collector["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(collector[kind]), kind
    assert "http" in collector["receivers"]["otlp"]["protocols"]
    sources = yaml.safe_load((ROOT / "config/grafana-datasources.yml").read_text())["datasources"]
    uids = {source["uid"] for source in sources}
    links = [link for s in sources for link in s.get("jsonData", {}).get("exemplarTraceIdDestinations", [])]
    assert links and all(link["name"] == "trace_id" and link["datasourceUid"] in uids for link in links)
