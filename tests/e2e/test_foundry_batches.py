"""The Batch API on the real runtime, through the official openai client (issue 26): a batch of chat requests runs
to an output file with one 200 line per input line; embeddings too; a bad input file fails with its lines; another
key sees neither the batch nor its files; cancel keeps what finished; a gateway SIGKILLed mid-batch resumes it and
each custom_id is in the output exactly once; the same as a front over a node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.test_batches import finished, jsonl, lines_of, run_batch
from tests.helpers import ROOT, GatewayProcess, require_module, wait_for

require_module("foundry_local_sdk")
A, B = "team-a-secret-key", "team-b-secret-key"
KEYS = {"keys": [{"name": "team-a", "key": A}, {"name": "team-b", "key": B}]}
CHAT = "/v1/chat/completions"


def chat_lines(n: int, prefix: str = "q") -> bytes:
    return b"\n".join(json.dumps({
        "custom_id": f"{prefix}-{i}", "method": "POST", "url": CHAT,
        "body": {"model": "tiny-chat", "messages": [{"role": "user", "content": f"Tell me about number {i}"}],
                 "max_tokens": 16}}).encode() for i in range(n))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("foundry-batches")
    (folder / "keys.json").write_text(json.dumps(KEYS))
    return folder, {"GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(folder / "cache"),
                    "GATEWAY_REGISTRY_WATCH_INTERVAL": "0", "GATEWAY_KEYS_FILE": str(folder / "keys.json"),
                    "GATEWAY_CACHE": "off"}


@pytest.fixture(scope="module")
def gateway(env: tuple[Path, dict[str, str]]) -> Iterator[GatewayProcess]:
    folder, settings = env
    with GatewayProcess(registry=ROOT / "models.json", env=settings, log_path=folder / "gateway.log") as gw:
        gw.wait_ready(120)
        yield gw


def client(gw: GatewayProcess, key: str = A) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=120)


def test_a_batch_runs_on_the_runtime_to_one_200_line_per_input_line(gateway: GatewayProcess) -> None:
    a = client(gateway)
    done = finished(a, run_batch(a, chat_lines(20)).id, timeout=300)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (20, 20, 0)
    output = lines_of(a, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"q-{i}" for i in range(20)]
    for line in output:
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] > 0
    embedded = finished(a, run_batch(a, jsonl(3, "/v1/embeddings").replace(b'"embed-a"', b'"tiny-embed"'),
                                     "/v1/embeddings").id, timeout=300)
    assert embedded.status == "completed" and embedded.request_counts.completed == 3
    vectors = lines_of(a, embedded.output_file_id)
    assert len(vectors[0]["response"]["body"]["data"][0]["embedding"]) == 128


def test_bad_lines_fail_the_batch_and_another_key_sees_nothing(gateway: GatewayProcess) -> None:
    a, b = client(gateway), client(gateway, B)
    bad = b"\n".join([chat_lines(1).strip(), b"{oops", chat_lines(1, "x").replace(CHAT.encode(), b"/v1/images").strip(),
                      chat_lines(1).strip()])
    done = finished(a, run_batch(a, bad).id)
    assert done.status == "failed" and done.errors is not None
    assert [(e.line, e.code) for e in done.errors.data] == [(2, "invalid_json_line"), (3, "invalid_url"),
                                                           (4, "duplicate_custom_id")]
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(done.id)
    with pytest.raises(openai.NotFoundError):
        b.files.content(done.input_file_id)
    assert done.id not in {x.id for x in b.batches.list()}


def test_cancel_keeps_what_finished(gateway: GatewayProcess) -> None:
    a = client(gateway)
    batch = run_batch(a, chat_lines(3000, "c"))  # ~30 s of work: the cancel comes well before the end
    assert wait_for(lambda: a.batches.retrieve(batch.id).request_counts.completed >= 3, timeout=120)
    a.batches.cancel(batch.id)
    done = finished(a, batch.id, timeout=120)
    assert done.status == "cancelled"
    output, errors = lines_of(a, done.output_file_id), lines_of(a, done.error_file_id)
    assert len(output) >= 3 and len(output) + len(errors) == 3000 and len(errors) > 0
    assert all(line["response"]["status_code"] == 200 for line in output)


def test_a_gateway_killed_mid_batch_resumes_with_each_custom_id_once(env: tuple[Path, dict[str, str]],
                                                                     tmp_path: Path) -> None:
    _, settings = env
    gw = GatewayProcess(registry=ROOT / "models.json", log_path=tmp_path / "gateway.log",
                        env={**settings, "GATEWAY_FOUNDRY_CACHE_DIR": str(tmp_path / "cache")})
    with gw:
        gw.wait_ready(120)
        a = client(gw)
        batch = run_batch(a, chat_lines(60, "k"))
        assert wait_for(lambda: a.batches.retrieve(batch.id).request_counts.completed >= 5, timeout=120)
        assert gw.proc is not None
        gw.proc.kill()  # SIGKILL: lines in flight are lost with the process
        gw.proc.wait(10)
        gw.start().wait_ready(120)
        done = finished(a, batch.id, timeout=300)
        assert done.status == "completed" and done.request_counts.completed == 60
        output = lines_of(a, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"k-{i}" for i in range(60))
        assert all(line["response"]["status_code"] == 200 for line in output)


def test_a_front_runs_a_batch_over_its_node(tmp_path: Path) -> None:
    node = GatewayProcess(registry=ROOT / "models.json", log_path=tmp_path / "node.log", env={
        "GATEWAY_UPSTREAM_MODE": "managed", "GATEWAY_FOUNDRY_CACHE_DIR": str(tmp_path / "cache"),
        "GATEWAY_REGISTRY_WATCH_INTERVAL": "0"})
    with node:
        node.wait_ready(120)
        with GatewayProcess(registry=ROOT / "models.json", log_path=tmp_path / "front.log", env={
                "GATEWAY_NODES": node.url, "GATEWAY_NODE_POLL_INTERVAL": "0.2",
                "GATEWAY_REGISTRY_WATCH_INTERVAL": "0"}) as front:
            front.wait_ready(60)
            c = openai.OpenAI(base_url=front.base_url, api_key="unused", max_retries=0, timeout=120)
            done = finished(c, run_batch(c, chat_lines(8, "f")).id, timeout=300)
            assert done.status == "completed" and done.request_counts.completed == 8
            assert all(x["response"]["status_code"] == 200 for x in lines_of(c, done.output_file_id))
