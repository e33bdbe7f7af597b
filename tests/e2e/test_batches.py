"""The Batch API against the in-repo fake upstream, through the official openai client: a batch runs to an
output file with each custom_id once; a bad input file fails with its lines; files and batches are per key;
cancel keeps what finished; a gateway SIGKILLed mid-batch resumes it with each custom_id exactly once; batch lines
yield to interactive traffic and run several at once when it is quiet. The same on the real runtime:
tests/e2e/test_foundry_batches.py; the numbers: ``make bench-batch``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import ROOT, GatewayProcess, wait_for, write_registry

REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}, {"name": "embed-a", "task": "embeddings",
                                                                   "min_ram_gb": 1}]
KEYS = {"keys": [{"name": "team-a", "key": "a-secret"}, {"name": "team-b", "key": "b-secret"}]}
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(models=["chat-a", "embed-a"]) as up:
        yield up


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("batches")
    registry = write_registry(folder / "models.json", REGISTRY)
    (folder / "keys.json").write_text(json.dumps(KEYS))
    return registry, {**FAKE_ENV, "GATEWAY_KEYS_FILE": str(folder / "keys.json"), "GATEWAY_CACHE": "off",
                      "GATEWAY_MAX_FILE_BYTES": "200000", "GATEWAY_ADAPTIVE_CONCURRENCY": "false",
                      "GATEWAY_MODEL_CONCURRENCY": "8"}


@pytest.fixture(scope="module")
def gateway(upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    registry, env = setup
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with GatewayProcess(upstream=upstream.url, registry=registry, env=env, log_path=log) as gw:
        gw.wait_ready()
        yield gw


def _client(gw: GatewayProcess, key: str = "a-secret") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def jsonl(n: int, url: str = CHAT, prefix: str = "req") -> bytes:
    body: dict[str, Any] = ({"model": "chat-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
                            if url == CHAT else {"model": "embed-a", "input": "hello"})
    return b"\n".join(json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": url,
                                  "body": {**body, "user": str(i)}}).encode() for i in range(n)) + b"\n"


def run_batch(client: openai.OpenAI, content: bytes, endpoint: str = CHAT, **extra: Any) -> Any:
    uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                                 completion_window="24h", **extra)


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Any:
    done: list[Any] = []

    def check() -> bool:
        batch = client.batches.retrieve(batch_id)
        done[:] = [batch]
        return batch.status in ("completed", "failed", "cancelled", "expired")

    assert wait_for(check, timeout=timeout, interval=0.1), done
    return done[0]


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


def test_a_batch_runs_to_an_output_file_with_each_custom_id_once(gateway: GatewayProcess,
                                                                 upstream: UpstreamProcess) -> None:
    client = _client(gateway)
    batch = run_batch(client, jsonl(12), metadata={"purpose": "nightly eval"})
    assert batch.status == "validating" and batch.object == "batch" and batch.metadata == {"purpose": "nightly eval"}
    done = finished(client, batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 12, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.expires_at > done.created_at
    output = lines_of(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(12)]
    assert all(line["response"]["status_code"] == 200 and line["error"] is None and line["id"].startswith(
        "batch_req_") for line in output)
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "Hello from chat-a."
    assert upstream.stats()["requests"] == 12
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert any(b.id == batch.id for b in client.batches.list())


def test_embeddings_batches_and_failed_lines_in_the_error_file(gateway: GatewayProcess,
                                                               upstream: UpstreamProcess) -> None:
    client = _client(gateway)
    done = finished(client, run_batch(client, jsonl(3, "/v1/embeddings"), "/v1/embeddings").id)
    assert done.status == "completed" and len(lines_of(client, done.output_file_id)[0]["response"]["body"]["data"]) == 1
    upstream.fault("status", count=1, status=400)
    done = finished(client, run_batch(client, jsonl(3)).id)
    assert done.status == "completed" and done.request_counts.failed == 1 and done.request_counts.completed == 2
    errors = lines_of(client, done.error_file_id)
    assert len(errors) == 1 and errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["message"]


def test_a_bad_input_file_fails_with_its_lines(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    client = _client(gateway)
    content = b"\n".join([jsonl(1).strip(), b"{not json", jsonl(1, "/v1/completions", "other").strip(),
                          jsonl(1).strip()])
    done = finished(client, run_batch(client, content).id)
    assert done.status == "failed" and done.failed_at
    assert done.errors is not None
    assert [(e.line, e.code) for e in done.errors.data] == [(2, "invalid_json_line"), (3, "invalid_url"),
                                                           (4, "duplicate_custom_id")]
    assert upstream.stats()["requests"] == 0  # nothing of a bad file runs
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=done.input_file_id, endpoint="/v1/moderations",  # type: ignore[arg-type]
                              completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", b"{}"), purpose="assistants")


def test_files_and_batches_belong_to_their_key(gateway: GatewayProcess) -> None:
    a, b = _client(gateway), _client(gateway, "b-secret")
    batch = run_batch(a, jsonl(2))
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(batch.input_file_id)
    with pytest.raises(openai.NotFoundError):
        b.files.content(batch.input_file_id)
    with pytest.raises(openai.NotFoundError):
        b.batches.cancel(batch.id)
    assert batch.id not in {x.id for x in b.batches.list()}
    assert batch.input_file_id not in {f.id for f in b.files.list()}
    with pytest.raises(openai.NotFoundError):
        b.batches.create(input_file_id=batch.input_file_id, endpoint=CHAT, completion_window="24h")
    assert finished(a, batch.id).status == "completed"


def test_a_file_over_the_limit_is_refused_and_a_file_can_be_deleted(gateway: GatewayProcess) -> None:
    client = _client(gateway)
    uploaded = client.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
    assert client.files.content(uploaded.id).content == jsonl(1)
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    big = httpx.post(f"{gateway.base_url}/files", headers={"Authorization": "Bearer a-secret"}, timeout=30,
                     files={"file": ("big.jsonl", b"x" * 300_000)}, data={"purpose": "batch"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "file_too_large"


def test_cancel_keeps_what_finished(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    client = _client(gateway)
    upstream.configure(delay_ms=150)
    batch = run_batch(client, jsonl(40))
    assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 2, timeout=30)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = finished(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert len(output) >= 2 and len(output) + len(errors) == 40
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert len({line["custom_id"] for line in output + errors}) == 40
    with pytest.raises(openai.APIStatusError) as refused:
        client.batches.cancel(batch.id)
    assert refused.value.status_code == 409


def test_a_gateway_killed_mid_batch_resumes_it_with_each_custom_id_once(
        upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    registry, env = setup
    upstream.configure(delay_ms=100)
    gw = GatewayProcess(upstream=upstream.url, registry=registry, env=env, log_path=tmp_path / "gw.log")
    with gw:
        client = _client(gw)
        batch = run_batch(client, jsonl(30))
        assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 5, timeout=30)
        assert gw.proc is not None
        gw.proc.kill()  # SIGKILL: no shutdown, lines in flight lost
        gw.proc.wait(10)
        gw.start()
        done = finished(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 30
        output = lines_of(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(30))
        assert upstream.stats()["requests"] >= 30


def test_batch_lines_yield_to_interactive_traffic(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    """While an interactive stream runs no batch line starts; once traffic is quiet the batch runs several lines
    at once."""
    client = _client(gateway)
    upstream.configure(chunks=30, chunk_delay_ms=40, delay_ms=100)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers={"Authorization": "Bearer a-secret"},
                      json={"model": "chat-a", "messages": [{"role": "user", "content": "stream"}], "stream": True},
                      timeout=30) as interactive:
        events = interactive.iter_lines()
        next(events)
        batch = run_batch(client, jsonl(16))
        for _, line in zip(range(20), events, strict=False):  # ~0.8 s of the interactive stream, batch waiting
            assert line is not None
        assert upstream.stats()["requests"] == 1  # the interactive stream only
        assert client.batches.retrieve(batch.id).request_counts.completed == 0
    done = finished(client, batch.id)
    assert done.status == "completed"
    assert upstream.stats()["max_in_progress_json"] >= 2  # quiet: lines ran side by side


def test_the_cli_lists_shows_and_cancels_batches(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    client = _client(gateway)
    done = finished(client, run_batch(client, jsonl(2), metadata={"task": "chat"}).id)
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_API_KEY": "a-secret"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "batches", *args, "--gateway", gateway.url],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    listed = cli("ls")
    assert listed.returncode == 0 and listed.stdout.splitlines()[0] == "id\tstatus\tendpoint\tdone\tcreated"
    assert f"{done.id}\tcompleted\t/v1/chat/completions\t2/2" in listed.stdout
    shown = cli("show", done.id)
    assert shown.returncode == 0 and "metadata.task\tchat" in shown.stdout and done.output_file_id in shown.stdout
    assert json.loads(cli("show", done.id, "--json").stdout)["request_counts"]["completed"] == 2
    upstream.configure(delay_ms=200)
    running = run_batch(client, jsonl(30))
    cancelled = cli("cancel", running.id)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"{running.id}: cancel")
    assert finished(client, running.id).status == "cancelled"
    refused = cli("cancel", running.id)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and "cannot be cancelled" in refused.stderr
    missing = cli("show", "batch_nope")
    assert missing.returncode == 1 and "404" in missing.stderr and "Traceback" not in missing.stderr


def test_bench_sends_the_prompt_set_as_a_batch(gateway: GatewayProcess, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"p{i}", "task": "chat", "prompt": f"Say {i}"}) for i in range(3)))
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_API_KEY": "a-secret"}
    run = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--batch", "--gateway", gateway.url, "--model",
                          "chat-a", "--prompts", str(prompts), "--repeat", "2", "--out", str(tmp_path / "out"),
                          "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["meta"]["target"] == "batch" and doc["meta"]["batch_status"] == "completed"
    assert len(doc["results"]) == 6 and {r["status"] for r in doc["results"]} == {"ok"}
    assert doc["results"][0]["output"] == "Hello from chat-a." and doc["summary"][0]["requests"] == 6
    assert len(list((tmp_path / "out").glob("bench-*.csv"))) == 1


def test_a_store_that_cannot_be_reached_is_a_503_and_one_log_line(upstream: UpstreamProcess,
                                                                   setup: tuple[Path, dict[str, str]],
                                                                   tmp_path: Path) -> None:
    registry, env = setup
    log = tmp_path / "gateway.log"
    with GatewayProcess(upstream=upstream.url, registry=registry, log_path=log,
                        env={**env, "GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0"}) as gw:
        gw.wait_ready()
        headers = {"Authorization": "Bearer a-secret"}
        for method, path in (("GET", "/batches"), ("GET", "/batches/batch_x"), ("POST", "/batches/batch_x/cancel"),
                             ("GET", "/files"), ("GET", "/files/file-x"), ("DELETE", "/files/file-x"),
                             ("GET", "/responses/resp_x"), ("DELETE", "/responses/resp_x")):
            answer = httpx.request(method, f"{gw.base_url}{path}", headers=headers, timeout=30)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.json()["error"]["code"] == "state_store_unavailable" and answer.headers["retry-after"]
        assert wait_for(lambda: "running batches: redis" in log.read_text(), timeout=10)
    assert "Traceback" not in log.read_text()  # an outage is one line, not a stack


# --- state that holds under real use (issue 31) ------------------------------------------------------------------


def test_a_batch_whose_output_is_larger_than_an_upload_ends_and_holds_no_other(gateway: GatewayProcess,
                                                                              upstream: UpstreamProcess) -> None:
    """Finding 1: the output and error files are the gateway's own, not uploads — an output over
    GATEWAY_MAX_FILE_BYTES (200 kB here) is written, and the next key's batch runs after it."""
    a, b = _client(gateway), _client(gateway, "b-secret")
    upstream.configure(reply="y" * 20_000)
    big = run_batch(a, jsonl(15))  # ~300 kB of output
    small = run_batch(b, jsonl(2, prefix="b"))
    done = finished(a, big.id)
    assert done.status == "completed", done
    assert a.files.retrieve(done.output_file_id).bytes > 200_000
    assert len(lines_of(a, done.output_file_id)) == 15
    assert finished(b, small.id).status == "completed"


def test_batches_are_listed_newest_first_while_one_runs(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    """Finding 15: a batch written after every line keeps its place; the list is newest first by created_at."""
    client = _client(gateway)
    upstream.configure(delay_ms=100)
    first = run_batch(client, jsonl(30))
    assert wait_for(lambda: client.batches.retrieve(first.id).request_counts.completed >= 1, timeout=30)
    later = [run_batch(client, jsonl(1, prefix=f"later{i}")) for i in range(2)]
    listed = [b.id for b in client.batches.list(limit=100)]
    mine = [i for i in listed if i in {first.id, *(b.id for b in later)}]
    assert mine == [later[1].id, later[0].id, first.id]
    page = client.batches.list(limit=1, after=later[1].id)
    assert [b.id for b in page.data] == [later[0].id]
    for batch in (first, *later):
        finished(client, batch.id)


def test_a_byte_order_mark_runs_and_an_empty_upload_is_refused(gateway: GatewayProcess) -> None:
    """Finding 16."""
    client = _client(gateway)
    done = finished(client, run_batch(client, b"\xef\xbb\xbf" + jsonl(2)).id)
    assert done.status == "completed" and done.request_counts.completed == 2
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.files.create(file=("empty.jsonl", b""), purpose="batch")


def test_a_large_body_to_batches_is_refused_without_reading_it(gateway: GatewayProcess) -> None:
    """Finding 3: every route's body has a limit — the declared length is refused at once, a chunked body the
    moment it passes GATEWAY_MAX_BODY_BYTES."""
    import socket

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-secret\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 300000000\r\n\r\n{")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    sent, head = _chunked_until_answered(gateway, b"POST /v1/batches HTTP/1.1\r\nHost: x\r\n"
                                         b"Authorization: Bearer a-secret\r\nContent-Type: application/json\r\n",
                                         total=40 << 20)
    assert head.startswith(b"HTTP/1.1 413") and b"body_too_large" in head, head[:300]
    assert sent < 24 << 20  # answered at the 4 MiB limit (plus what the sockets buffer), not after all 40 MiB


def test_a_chunked_upload_past_the_limit_stops_at_the_limit(gateway: GatewayProcess, tmp_path: Path) -> None:
    """Finding 3: an upload is not spooled whole before its size is known: the 413 comes at the limit."""
    boundary = b"xyzzy"
    start = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--' + boundary +
             b'\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
             b"Content-Type: application/octet-stream\r\n\r\n")
    sent, head = _chunked_until_answered(gateway, b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
                                         b"Authorization: Bearer a-secret\r\n"
                                         b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n",
                                         total=40 << 20, first=start)
    assert head.startswith(b"HTTP/1.1 413") and b"file_too_large" in head, head[:300]
    assert sent < 20 << 20
    files = Path(gateway.env["GATEWAY_STATE_DIR"]) / "files"
    assert wait_for(lambda: not any(p.name.startswith(".") for p in files.iterdir()), timeout=10)


def test_a_download_is_streamed_and_a_changed_file_is_an_error_before_any_byte(gateway: GatewayProcess) -> None:
    client = _client(gateway)
    content = jsonl(1) * 1000
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    with httpx.stream("GET", f"{gateway.base_url}/files/{uploaded.id}/content", timeout=30,
                      headers={"Authorization": "Bearer a-secret"}) as answer:
        assert answer.status_code == 200 and int(answer.headers["content-length"]) == len(content)
        assert b"".join(answer.iter_bytes()) == content
    path = Path(gateway.env["GATEWAY_STATE_DIR"]) / "files" / uploaded.id
    path.write_bytes(b"x" + content[1:])
    broken = httpx.get(f"{gateway.base_url}/files/{uploaded.id}/content", timeout=30,
                       headers={"Authorization": "Bearer a-secret"})
    assert broken.status_code == 500 and broken.json()["error"]["code"] == "file_unreadable"


def _chunked_until_answered(gw: GatewayProcess, head: bytes, total: int, first: bytes = b"") -> tuple[int, bytes]:
    """Send a chunked body of ``total`` bytes until the gateway answers; (bytes sent by then, the answer)."""
    import select
    import socket

    piece = b"x" * (256 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        if first:
            sock.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:  # the gateway closed after its answer
                break
            sent += len(piece)
        else:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"}}" not in answer and (more := sock.recv(65536)):  # the whole answer, its JSON last
            answer += more
    return sent, answer


def test_files_expire_and_their_bytes_are_swept(upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]],
                                                tmp_path: Path) -> None:
    """Finding 9: files have OpenAI's expiry (``expires_after``, else GATEWAY_FILES_TTL) and a sweep removes the
    bytes of those that went."""
    registry, env = setup
    with GatewayProcess(upstream=upstream.url, registry=registry, log_path=tmp_path / "gw.log",
                        env={**env, "GATEWAY_FILES_TTL": "1", "GATEWAY_SWEEP_INTERVAL": "0.3"}) as gw:
        client = _client(gw)
        kept = client.files.create(file=("in.jsonl", jsonl(1)), purpose="batch",
                                   expires_after={"anchor": "created_at", "seconds": 3600})
        assert kept.expires_at == kept.created_at + 3600
        short = client.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
        assert short.expires_at is not None and short.expires_at <= short.created_at + 2
        folder = Path(gw.env["GATEWAY_STATE_DIR"]) / "files"
        assert (folder / short.id).exists()

        def gone() -> bool:
            try:
                client.files.retrieve(short.id)
            except openai.NotFoundError:
                return True
            return False

        assert wait_for(gone, timeout=10)
        assert client.files.retrieve(kept.id).id == kept.id
        with pytest.raises(openai.BadRequestError, match="expires_after"):
            client.files.create(file=("in.jsonl", jsonl(1)), purpose="batch",
                                expires_after={"anchor": "created_at", "seconds": 5})


def test_an_upload_cut_by_a_sigkill_leaves_nothing_after_a_restart(
        upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Finding 13: the upload is written where it will live, as it arrives, under a temporary name of its
    writer's; the next gateway's sweep removes it (once at start)."""
    import socket

    registry, env = setup
    gw = GatewayProcess(upstream=upstream.url, registry=registry, env=env, log_path=tmp_path / "gw.log")
    with gw:
        folder = Path(gw.env["GATEWAY_STATE_DIR"]) / "files"
        boundary = b"xyzzy"
        part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--' +
                boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n' +
                jsonl(50))
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-secret\r\n"
                         b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
                         b"Content-Length: 100000\r\n\r\n" + part)
            assert wait_for(lambda: folder.is_dir() and any(p.name.startswith(".tmp-") for p in folder.iterdir()),
                            timeout=10)
            assert gw.proc is not None
            gw.proc.kill()
            gw.proc.wait(10)
        assert any(p.name.startswith(".tmp-") for p in folder.iterdir())
        gw.start()
        assert wait_for(lambda: not any(p.name.startswith(".") for p in folder.iterdir()), timeout=10)


def test_deleting_a_running_batchs_input_keeps_the_answers_it_had(
        upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Finding 14: the input deleted mid-batch, then a restart: the batch fails saying why, with the answers it
    had written out (they were lost before)."""
    registry, env = setup
    upstream.configure(delay_ms=400)
    gw = GatewayProcess(upstream=upstream.url, registry=registry, env=env, log_path=tmp_path / "gw.log")
    with gw:
        client = _client(gw)
        batch = run_batch(client, jsonl(60))
        assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 3, timeout=30)
        client.files.delete(batch.input_file_id)
        assert gw.proc is not None
        gw.proc.kill()
        gw.proc.wait(10)
        gw.start()
        done = finished(client, batch.id)
        assert done.status == "failed" and done.errors is not None
        assert done.errors.data[0].code == "file_not_found" and "did not run" in (done.errors.data[0].message or "")
        output = lines_of(client, done.output_file_id)
        assert len(output) >= 3 and done.request_counts.completed == len(output)
        assert all(line["response"]["status_code"] == 200 for line in output)


def test_two_keys_batches_take_turns(gateway: GatewayProcess, upstream: UpstreamProcess) -> None:
    """One tenant's long batch never holds another's: while both wait they take turns (a slice each)."""
    a, b = _client(gateway), _client(gateway, "b-secret")
    upstream.configure(delay_ms=300)
    long = run_batch(a, jsonl(400))
    assert wait_for(lambda: a.batches.retrieve(long.id).request_counts.completed >= 1, timeout=30)
    short = run_batch(b, jsonl(3, prefix="b"))
    assert finished(b, short.id, timeout=40).status == "completed"
    assert a.batches.retrieve(long.id).status == "in_progress"  # still going: the short one did not wait for it
    a.batches.cancel(long.id)
    finished(a, long.id)


def test_the_cli_creates_a_batch_and_writes_its_output(gateway: GatewayProcess, upstream: UpstreamProcess,
                                                       tmp_path: Path) -> None:
    """Issue 32, item 9: `batches create FILE --wait` and `batches output ID` (a JSONL file in, the output out)."""
    requests = tmp_path / "in.jsonl"
    requests.write_bytes(jsonl(4, prefix="cli"))
    env = {**os.environ, "GATEWAY_ENV_FILE": "/nonexistent", "GATEWAY_API_KEY": "a-secret"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "batches", *args, "--gateway", gateway.url],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    out = tmp_path / "out.jsonl"
    made = cli("create", str(requests), "--wait", "--out", str(out), "--json")
    assert made.returncode == 0, made.stderr
    batch = json.loads(made.stdout)
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 4
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == [f"cli-{i}" for i in range(4)]
    again = cli("output", batch["id"])
    assert again.returncode == 0 and again.stdout == out.read_text()
    none = cli("output", batch["id"], "--errors")
    assert none.returncode == 1 and "no error file" in none.stderr
    quick = cli("create", str(requests))
    assert quick.returncode == 0 and "created from" in quick.stdout and "batches show" in quick.stdout
    missing = cli("create", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
