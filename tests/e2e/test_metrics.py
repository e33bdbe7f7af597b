"""Metrics an ops team can trust: promtool-valid exposition, a real Prometheus scraping the gateway,
TTFT observed at the first chunk, aborted streams counted, bounded labels, several workers."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, free_port, require_program, wait_for

MESSAGES = [{"role": "user", "content": "count the tokens"}]


def scrape(gw: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
    )


@pytest.fixture()
def fresh_gateway(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway of its own, so counters start at zero."""
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=FAKE_ENV,
                        log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        yield gw


def test_exposition_passes_promtool(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    require_program("promtool")
    client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=4)
    list(client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=4, stream=True))
    text = httpx.get(f"{gateway.url}/metrics").text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ops_config_and_rules_are_valid() -> None:
    require_program("promtool")
    for args in (["check", "config", "config/prometheus.yml"],
                 ["check", "rules", "config/alerts.yml", "config/recording-rules.yml"]):
        result = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_and_rules_name_only_exported_metrics(gateway: GatewayProcess) -> None:
    exported = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics").text):
        exported.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    dashboard = json.loads((ROOT / "config/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 10
    for rules in ("config/alerts.yml", "config/recording-rules.yml"):
        exprs += re.findall(r"expr: (.+(?:\n {10,}.+)*)", (ROOT / rules).read_text())
    used = {m for expr in exprs for m in re.findall(r"\bgateway_[a-z_]+", expr)}
    missing = sorted(used - exported)
    assert not missing, f"PromQL names metrics the gateway does not export: {missing}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "latency" if "latency" in titles else "duration", "first token", "tokens",
                  "errors", "routing", "upstream up", "overhead"):
        assert topic in titles, topic


def test_ttft_is_observed_at_the_first_chunk(fresh_gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.configure(chunks=5, chunk_delay_ms=300)
    client = openai.OpenAI(base_url=fresh_gateway.base_url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=8, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the first token is here; the stream still runs for ~1.2 s
    during = scrape(fresh_gateway)
    assert total(during, "gateway_time_to_first_token_seconds_count", model="chat-a") == 1
    assert total(during, "gateway_requests_total") == 0  # the request itself is not finished yet
    list(stream)
    samples = scrape(fresh_gateway)
    ttft = total(samples, "gateway_time_to_first_token_seconds_sum", model="chat-a")
    duration = total(samples, "gateway_request_duration_seconds_sum", model="chat-a")
    assert total(samples, "gateway_time_to_first_token_seconds_count", model="chat-a") == 1
    assert duration >= 1.2 and ttft < duration - 0.8, (ttft, duration)
    assert total(samples, "gateway_time_per_output_token_seconds_count", model="chat-a") == 1


def test_aborted_stream_is_counted(fresh_gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    upstream.configure(chunks=20, chunk_delay_ms=200)
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 8}
    with httpx.stream("POST", f"{fresh_gateway.base_url}/chat/completions", json=body, timeout=10) as response:
        for _ in response.iter_raw():
            break  # the client leaves after the first bytes
    wait_for(lambda: total(scrape(fresh_gateway), "gateway_requests_total", status_class="aborted") == 1)
    assert total(scrape(fresh_gateway), "gateway_requests_total", status_class="aborted") == 1
    assert total(scrape(fresh_gateway), "gateway_requests_in_flight") == 0


def test_label_cardinality_is_bounded(fresh_gateway: GatewayProcess) -> None:
    with httpx.Client(timeout=10) as http:
        for _ in range(200):
            body = {"model": f"random-{uuid.uuid4().hex}", "messages": MESSAGES}
            assert http.post(f"{fresh_gateway.base_url}/chat/completions", json=body).status_code == 404
            http.post(f"{fresh_gateway.base_url}/chat/completions", json={"messages": MESSAGES},
                      headers={"X-Task": uuid.uuid4().hex})
    samples = scrape(fresh_gateway)
    models = {dict(ls).get("model") for (_, ls) in samples if dict(ls).get("model")}
    tasks = {dict(ls).get("task") for (_, ls) in samples if dict(ls).get("task")}
    assert models <= {"chat-big", "chat-a", "chat-b", "code-a", "ghost", "vision-xl", "other"}, models
    assert tasks <= {"chat", "code", "vision", "other"}, tasks
    assert total(samples, "gateway_requests_total", model="other", status_class="4xx") == 400
    assert len(samples) < 2000


def test_several_workers_report_one_total(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> None:
    env = {**FAKE_ENV, "GATEWAY_WORKERS": "2"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "gw.log") as gw:
        gw.wait_ready()
        with httpx.Client(timeout=10) as http:
            for _ in range(30):  # new connections, spread over the workers by the kernel
                http.post(f"{gw.base_url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 4},
                          headers={"connection": "close"}).raise_for_status()
        for _ in range(5):  # every scrape, whichever worker answers it, sees all 30
            assert total(scrape(gw), "gateway_requests_total", status_class="2xx") == 30


def test_real_prometheus_scrapes_the_gateway(fresh_gateway: GatewayProcess, tmp_path: Path) -> None:
    require_program("prometheus")
    client = openai.OpenAI(base_url=fresh_gateway.base_url, api_key="x", max_retries=0)
    prompt_tokens = completion_tokens = 0
    for _ in range(6):
        reply = client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=8)
        assert reply.usage is not None
        prompt_tokens += reply.usage.prompt_tokens
        completion_tokens += reply.usage.completion_tokens
    for _ in range(4):
        chunks = list(client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=8, stream=True,
                                                     stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        assert usage is not None
        prompt_tokens += usage.prompt_tokens
        completion_tokens += usage.completion_tokens

    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = fresh_gateway.url.removeprefix("http://")
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: gateway\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(expr: str) -> list[dict[str, object]]:
        data = httpx.get(api, params={"query": expr}, timeout=5).json()
        assert data["status"] == "success", data
        return data["data"]["result"]  # type: ignore[no-any-return]

    try:
        deadline = time.monotonic() + 30
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            try:
                result = query('sum(gateway_requests_total{route="chat"})')
            except (httpx.HTTPError, ValueError):  # not listening yet, or "Service Unavailable" while starting
                result = []
            if result:
                break
            time.sleep(0.5)
        assert result, "Prometheus never scraped the gateway"
        assert float(result[0]["value"][1]) == 10  # type: ignore[index]
        assert float(query('sum(gateway_tokens_total{type="input"})')[0]["value"][1]) == prompt_tokens  # type: ignore[index]
        assert float(query('sum(gateway_tokens_total{type="output"})')[0]["value"][1]) == completion_tokens  # type: ignore[index]
        for metric in ("gateway_request_duration_seconds", "gateway_time_to_first_token_seconds",
                       "gateway_overhead_seconds"):
            q = query(f"histogram_quantile(0.95, sum by (le) ({metric}_bucket))")
            value = float(q[0]["value"][1])  # type: ignore[index]
            assert value == value and value > 0, (metric, q)  # a number, not NaN
        assert query("gateway_upstream_up")[0]["value"][1] == "1"  # type: ignore[index]
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
