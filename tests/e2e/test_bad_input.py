"""Every row of docs/bad-input.md: the status and error code a bad request gets (never a 500, never a hang),
plus property-based fuzzing of request bodies and schemathesis over the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FAKE_ENV, serve_fake
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess

KEY = "sk-test-key"
OK = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"

# (row name in docs/bad-input.md, method, path, body (dict → JSON, bytes → raw), headers, status, error code)
ROWS: list[tuple[str, str, str, Any, dict[str, str], int, str | None]] = [
    ("malformed JSON", "POST", CHAT, b'{"messages": [', {}, 400, "invalid_json"),
    ("body is not an object", "POST", CHAT, b"[1, 2]", {}, 400, "invalid_json"),
    ("empty body", "POST", CHAT, b"", {}, 400, "invalid_json"),
    ("messages missing", "POST", CHAT, {"model": "auto"}, {}, 400, "missing_required_parameter"),
    ("messages empty", "POST", CHAT, {"messages": []}, {}, 400, "invalid_value"),
    ("messages not a list", "POST", CHAT, {"messages": "hi"}, {}, 400, "invalid_value"),
    ("message without role", "POST", CHAT, {"messages": [{"content": "hi"}]}, {}, 400, "invalid_value"),
    ("message with an unknown role", "POST", CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, {}, 400,
     "invalid_value"),
    ("message content of wrong type", "POST", CHAT, {"messages": [{"role": "user", "content": 5}]}, {}, 400,
     "invalid_type"),
    ("model of wrong type", "POST", CHAT, {"model": 42, "messages": OK}, {}, 400, "invalid_type"),
    ("stream of wrong type", "POST", CHAT, {"stream": "yes", "messages": OK}, {}, 400, "invalid_type"),
    ("max_tokens of wrong type", "POST", CHAT, {"max_tokens": "ten", "messages": OK}, {}, 400, "invalid_type"),
    ("max_tokens out of range", "POST", CHAT, {"max_tokens": 0, "messages": OK}, {}, 400, "invalid_value"),
    ("temperature out of range", "POST", CHAT, {"temperature": 7, "messages": OK}, {}, 400, "invalid_value"),
    ("stop of wrong type", "POST", CHAT, {"stop": 5, "messages": OK}, {}, 400, "invalid_type"),
    ("stream_options of wrong type", "POST", CHAT, {"stream_options": [], "messages": OK}, {}, 400, "invalid_type"),
    ("prompt missing (completions)", "POST", "/v1/completions", {"model": "auto"}, {}, 400,
     "missing_required_parameter"),
    ("input missing (responses)", "POST", "/v1/responses", {"model": "auto"}, {}, 400, "missing_required_parameter"),
    ("max_output_tokens out of range (responses)", "POST", "/v1/responses", {"input": "x", "max_output_tokens": 0},
     {}, 400, "invalid_value"),
    ("token-id input (embeddings)", "POST", "/v1/embeddings", {"input": [[1, 2]]}, {}, 400, "unsupported_value"),
    ("dimensions (embeddings)", "POST", "/v1/embeddings", {"input": "x", "dimensions": 8}, {}, 400,
     "unsupported_value"),
    ("no model can do the endpoint", "POST", "/v1/embeddings", {"input": "x"}, {}, 400, "unsupported_value"),
    ("endpoint the pinned model cannot do", "POST", "/v1/embeddings", {"model": "chat-a", "input": "x"}, {}, 400,
     "unsupported_value"),
    ("tools on a model without tools", "POST", CHAT, {"model": "chat-a", "messages": OK, "tools": [
        {"type": "function", "function": {"name": "f"}}]}, {}, 400, "unsupported_value"),
    ("json_schema on a model without it", "POST", CHAT, {"model": "chat-a", "messages": OK, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, {}, 400, "unsupported_value"),
    ("audio not sent as multipart", "POST", "/v1/audio/transcriptions", {"model": "auto"}, {}, 400,
     "invalid_request"),
    ("latency budget not a number", "POST", CHAT, {"messages": OK}, {"X-Latency-Budget-Ms": "fast"}, 400,
     "invalid_value"),
    ("unknown task", "POST", CHAT, {"messages": OK}, {"X-Task": "poetry"}, 400, "unknown_task"),
    ("unknown model", "POST", CHAT, {"model": "gpt-9", "messages": OK}, {}, 404, "model_not_found"),
    ("nothing fits the task", "POST", CHAT, {"messages": OK}, {"X-Task": "vision"}, 503, "no_viable_model"),
    ("oversized body", "POST", CHAT, b'{"messages": "' + b"x" * (5 * 1024 * 1024) + b'"}', {}, 413,
     "body_too_large"),
    ("huge header", "GET", "/v1/models", None, {"X-Big": "a" * 100_000}, 431, "headers_too_large"),
    ("missing API key", "POST", CHAT, {"messages": OK}, {"Authorization": ""}, 401, "invalid_api_key"),
    ("wrong API key", "POST", CHAT, {"messages": OK}, {"Authorization": "Bearer nope"}, 401, "invalid_api_key"),
    ("wrong method", "GET", CHAT, None, {}, 405, None),
    ("unknown route", "GET", "/v1/nope", None, {}, 404, None),
    ("bad query parameter", "GET", "/v1/route?task=" + "x" * 300, None, {}, 400, "invalid_value"),
    ("admin call without admin key", "POST", "/admin/reload", None, {}, 401, "invalid_api_key"),
]


@pytest.fixture(scope="module")
def gw(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    yield from serve_fake(request, {"GATEWAY_API_KEYS": f"other-key,{KEY}", "GATEWAY_ADMIN_API_KEY": "admin-key"})


def send(gw: GatewayProcess, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    all_headers = {"Authorization": f"Bearer {KEY}", **headers}
    if not all_headers["Authorization"]:
        del all_headers["Authorization"]
    kwargs: dict[str, Any] = {"headers": all_headers, "timeout": 10}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
    return httpx.request(method, gw.url + path, **kwargs)


@pytest.mark.parametrize(("name", "method", "path", "body", "headers", "status", "code"), ROWS,
                         ids=[row[0] for row in ROWS])
def test_bad_input_row(gw: GatewayProcess, name: str, method: str, path: str, body: Any, headers: dict[str, str],
                       status: int, code: str | None) -> None:
    r = send(gw, method, path, body, headers)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error) <= {"message", "type", "param", "code", "candidates",
                                                                  "fix"} and error["message"]
    if code:
        assert error["code"] == code, error
    if status == 401:
        assert r.headers.get("www-authenticate") == "Bearer"


def test_doc_table_lists_every_row() -> None:
    doc = (ROOT / "docs/bad-input.md").read_text()
    rows = {m.strip() for m in re.findall(r"^\| ([^|]+) \|", doc, flags=re.M)}
    for name, *_, status, _code in ROWS:
        assert name in rows, f"docs/bad-input.md has no row '{name}'"
        line = next(line for line in doc.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {status} |" in line, line


def test_valid_request_with_key_still_works(gw: GatewayProcess) -> None:
    assert send(gw, "POST", CHAT, {"messages": OK, "max_tokens": 4}, {}).status_code == 200


def test_metrics_and_admin_keys_are_separate(upstream: UpstreamProcess, registry_file: Path, tmp_path: Path) -> None:
    env = {**FAKE_ENV, "GATEWAY_METRICS_API_KEY": "scrape", "GATEWAY_ADMIN_API_KEY": "admin"}
    with GatewayProcess(upstream=upstream.url, registry=registry_file, env=env, log_path=tmp_path / "g.log") as g:
        assert httpx.get(f"{g.url}/metrics").status_code == 401
        assert httpx.get(f"{g.url}/metrics", headers={"Authorization": "Bearer admin"}).status_code == 401
        assert httpx.get(f"{g.url}/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 200
        assert httpx.get(f"{g.url}/admin/status", headers={"Authorization": "Bearer admin"}).status_code == 200
        assert httpx.get(f"{g.url}/healthz").status_code == 200  # probes stay open


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["model", "messages", "stream", "max_tokens", "temperature", "top_p", "n", "stop",
                          "stream_options", "seed", "tools", "prompt", "user", "input", "max_output_tokens",
                          "instructions", "encoding_format", "dimensions", "response_format", "text"])
bodies = st.dictionaries(fields, json_values, max_size=6) | st.builds(
    lambda extra, content: {"messages": [{"role": "user", "content": content}], **extra},
    st.dictionaries(fields, json_values, max_size=3), st.text(max_size=50),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, stream=st.booleans(),
       path=st.sampled_from([CHAT, "/v1/completions", "/v1/responses", "/v1/embeddings"]))
def test_fuzzed_bodies_never_500_nor_hang(gw: GatewayProcess, body: dict[str, Any], stream: bool, path: str) -> None:
    if stream:
        body = {**body, "stream": True}
    r = httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code != 500, r.text
    assert r.status_code < 500 or r.status_code in (502, 503, 504), r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_schemathesis_finds_no_server_error(gw: GatewayProcess) -> None:
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    failures = []
    operations = [operation.ok() for operation in schema.get_all_operations()]
    assert len(operations) >= 6

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(*(op.as_strategy() for op in operations)))
    def check(case: Any) -> None:
        response = case.call(base_url=gw.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        if response.status_code == 500:
            failures.append((case.operation.label, response.status_code, response.text[:200]))

    check()
    assert not failures, failures
