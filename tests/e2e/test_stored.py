"""Stored responses that hold under real use (issue 31), against the in-repo fake upstream with the official openai
client: each key's space has its own bound and one key never evicts another's (finding 4); a conversation is kept
a turn at a time and recalled within the body limit (finding 11); identical requests that are to be stored are
never joined to one generation — each gets its own id in its own key (finding 5); a full state disk is a clear 507
up front, in /readyz and a metric, with nothing half-written (finding 10)."""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import FAKE_ENV
from tests.fakes.upstream import UpstreamProcess
from tests.helpers import GatewayProcess, require_program, wait_for, write_registry

REGISTRY = [{"name": "chat-a", "task": "chat", "min_ram_gb": 1}]
KEYS = {"keys": [{"name": "team-a", "key": "a-secret", "storage_bytes": 30_000},
                 {"name": "team-b", "key": "b-secret"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(models=["chat-a"]) as up:
        yield up


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("stored")
    (folder / "keys.json").write_text(json.dumps(KEYS))
    return write_registry(folder / "models.json", REGISTRY), {
        **FAKE_ENV, "GATEWAY_KEYS_FILE": str(folder / "keys.json"), "GATEWAY_RESPONSES_MAX_BYTES": "4000000",
        "GATEWAY_MAX_BODY_BYTES": "1000000", "GATEWAY_CACHE_SCOPE": "shared"}


@pytest.fixture(scope="module")
def gateway(upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    registry, env = setup
    with GatewayProcess(upstream=upstream.url, registry=registry, env=env,
                        log_path=tmp_path_factory.mktemp("gw") / "gateway.log") as gw:
        gw.wait_ready()
        yield gw


def _client(gw: GatewayProcess, key: str = "a-secret") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def _stored_bytes(gw: GatewayProcess) -> int:
    with sqlite3.connect(Path(gw.env["GATEWAY_STATE_DIR"]) / "gateway.sqlite3") as db:
        return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM records WHERE space = 'responses'").fetchone()[0])


def test_one_key_never_evicts_anothers_stored_responses(gateway: GatewayProcess) -> None:
    """Finding 4: team-b's five responses, the oldest in the store, survive team-a filling its own bound
    (storage_bytes 30 kB); team-a loses only its own oldest."""
    a, b = _client(gateway), _client(gateway, "b-secret")
    kept_b = [b.responses.create(model="chat-a", input=f"team b {i} {secrets.token_hex(500)}").id for i in range(5)]
    kept_a = [a.responses.create(model="chat-a", input=f"team a {i} {secrets.token_hex(1500)}").id
              for i in range(60)]
    assert all(b.responses.retrieve(rid).id == rid for rid in kept_b)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(kept_a[0])
    assert a.responses.retrieve(kept_a[-1]).id == kept_a[-1]
    alive = 0
    for rid in kept_a:
        try:
            a.responses.retrieve(rid)
            alive += 1
        except openai.NotFoundError:
            pass
    assert 5 <= alive < 60  # within its bound (checked every few writes), never all of them


def test_a_conversation_is_kept_a_turn_at_a_time_and_recalled_within_the_body_limit(
        gateway: GatewayProcess) -> None:
    """Finding 11: 150 kB turns chained by previous_response_id: storage grows by each turn once (it was the
    whole conversation again in every turn), the follow-up sent upstream is bounded by GATEWAY_MAX_BODY_BYTES
    (1 MB here: a clear 400 naming it), and input_items still shows the whole conversation."""
    client = _client(gateway, "b-secret")
    before = _stored_bytes(gateway)
    previous: str | None = None
    turns = []
    refused: openai.BadRequestError | None = None
    for i in range(12):
        try:
            answer = client.responses.create(model="chat-a", input=f"turn {i} {secrets.token_hex(75_000)}",
                                             **({"previous_response_id": previous} if previous else {}))
        except openai.BadRequestError as exc:
            refused = exc
            break
        previous = answer.id
        turns.append(answer.id)
    assert refused is not None and 4 <= len(turns) < 12
    assert refused.body["code"] == "conversation_too_large" and "GATEWAY_MAX_BODY_BYTES" in refused.message  # type: ignore[index]
    grown = _stored_bytes(gateway) - before
    assert grown < len(turns) * 100_000, grown  # each 150 kB turn once (compressed ~75 kB); the whole was quadratic
    items = client.responses.input_items.list(turns[-1], limit=100, order="asc")
    assert len(items.data) == 2 * len(turns) - 1  # every turn's input and answer, then its own input
    client.responses.delete(turns[1])
    with pytest.raises(openai.BadRequestError, match=turns[1]):
        client.responses.create(model="chat-a", input="and then?", previous_response_id=turns[-1])


def test_identical_stored_requests_each_get_their_own_response(gateway: GatewayProcess,
                                                               upstream: UpstreamProcess) -> None:
    """Finding 5: with GATEWAY_CACHE_SCOPE=shared two keys asking the same deterministic question at once were
    joined to one generation, and team-b was handed team-a's response id (a 404 for team-b, a 400 to follow
    up). Each now gets its own id, stored in its own key."""
    upstream.configure(delay_ms=400)
    start = threading.Barrier(2)

    def ask(key: str) -> tuple[str, str]:
        start.wait(10)
        answer = httpx.post(f"{gateway.base_url}/responses", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                            json={"model": "chat-a", "input": "the same question", "temperature": 0})
        assert answer.status_code == 200, answer.text
        return key, answer.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ids = dict(pool.map(ask, ["a-secret", "b-secret"]))
    assert ids["a-secret"] != ids["b-secret"]
    for key, rid in ids.items():
        client = _client(gateway, key)
        assert client.responses.retrieve(rid).id == rid
        assert client.responses.create(model="chat-a", input="more", previous_response_id=rid).id


# --- a full disk ---------------------------------------------------------------------------------------------------


def _on_a_small_disk(upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]], tmp_path: Path,
                     min_free: int) -> tuple[GatewayProcess, Path]:
    """A gateway whose state directory is an 8 MiB tmpfs of its own (a mount namespace): a disk that really fills.
    Its state directory is seen from here through /proc/<pid>/root."""
    require_program("unshare")
    registry, env = setup
    state = tmp_path / "state"
    state.mkdir()
    wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"', str(state)]
    gw = GatewayProcess(upstream=upstream.url, registry=registry, log_path=tmp_path / "gw.log", wrap=wrap,
                        env={**env, "GATEWAY_STATE_DIR": str(state), "GATEWAY_STATE_MIN_FREE_BYTES": str(min_free),
                             "GATEWAY_MAX_FILE_BYTES": "20000000"}).start()
    gw.wait_ready()
    return gw, Path(f"/proc/{gw.pid}/root") / str(state).lstrip("/")


@pytest.fixture()
def on_a_small_disk(upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]],
                    tmp_path: Path) -> Iterator[tuple[GatewayProcess, Path]]:
    gw, state = _on_a_small_disk(upstream, setup, tmp_path, 2_000_000)
    try:
        yield gw, state
    finally:
        gw.stop()


def _upload(gw: GatewayProcess, size: int) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/files", headers={"Authorization": "Bearer a-secret"}, timeout=30,
                      files={"file": ("in.jsonl", secrets.token_bytes(size))}, data={"purpose": "batch"})


def test_a_full_state_disk_is_a_507_with_nothing_half_written(on_a_small_disk: tuple[GatewayProcess, Path]) -> None:
    gw, state = on_a_small_disk
    files = state / "files"
    answers = [_upload(gw, 1_000_000) for _ in range(8)]
    kept = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert kept and refused and {a.status_code for a in refused} == {507}  # no room for them beside the reserve
    assert refused[0].json()["error"]["code"] == "insufficient_storage" and refused[0].headers["retry-after"]
    assert sorted(p.name for p in files.iterdir()) == sorted(a.json()["id"] for a in kept)  # no half file
    free = shutil.disk_usage(state).free
    filler = state / "filler"  # something else fills the disk: under the reserve now
    filler.write_bytes(b"\0" * (free - 1_000_000))

    def full() -> bool:
        return bool(httpx.get(f"{gw.url}/readyz", timeout=10).json()["state"]["full"])

    assert wait_for(full, timeout=10)
    assert httpx.get(f"{gw.url}/readyz", timeout=10).json()["state"]["free_bytes"] < 2_000_000
    metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
    assert "gateway_state_full 1.0" in metrics
    stored = httpx.post(f"{gw.base_url}/responses", headers={"Authorization": "Bearer a-secret"}, timeout=30,
                        json={"model": "chat-a", "input": "hello"})
    assert stored.status_code == 507 and "store" in stored.json()["error"]["message"]
    unstored = httpx.post(f"{gw.base_url}/responses", headers={"Authorization": "Bearer a-secret"}, timeout=30,
                          json={"model": "chat-a", "input": "hello", "store": False})
    assert unstored.status_code == 200 and unstored.json()["store"] is False
    chat = httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": "Bearer a-secret"}, timeout=30,
                      json={"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200  # what needs no room still works
    assert _upload(gw, 1000).status_code == 507
    filler.unlink()
    assert wait_for(lambda: not full(), timeout=15)
    assert _upload(gw, 1000).status_code == 200


def test_a_write_that_runs_out_of_space_leaves_nothing(upstream: UpstreamProcess, setup: tuple[Path, dict[str, str]],
                                                       tmp_path: Path) -> None:
    """No reserve (GATEWAY_STATE_MIN_FREE_BYTES=0): the upload itself meets ENOSPC — a 507, its bytes removed,
    no record."""
    gw, state = _on_a_small_disk(upstream, setup, tmp_path, 0)
    try:
        seen = state / "files"
        answer = _upload(gw, 12_000_000)
        assert answer.status_code == 507 and answer.json()["error"]["code"] == "insufficient_storage"
        assert not seen.exists() or list(seen.iterdir()) == []
        listed = httpx.get(f"{gw.base_url}/files", headers={"Authorization": "Bearer a-secret"}, timeout=10)
        assert listed.json()["data"] == []
        assert httpx.get(f"{gw.url}/readyz", timeout=10).json()["state"]["full"] is True  # for a few seconds
        assert _upload(gw, 100_000).status_code in (200, 507)
    finally:
        gw.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_follow_up_sent_the_moment_the_answer_arrives_finds_it(gateway: GatewayProcess, stream: bool) -> None:
    """A stored response was kept after its client had the answer: a follow-up sent at once could find nothing
    (400 previous_response_not_found). It is kept before the answer's end goes out (JSON, and a stream's
    terminal event)."""
    client = _client(gateway, "b-secret")
    for _ in range(5):
        big = f"remember this {secrets.token_hex(300_000)}"  # a turn whose keeping takes a few ms
        if stream:
            with client.responses.stream(model="chat-a", input=big) as events:
                first = events.get_final_response()
        else:
            first = client.responses.create(model="chat-a", input=big)
        follow = client.responses.create(model="chat-a", input="and then?", previous_response_id=first.id)
        assert follow.previous_response_id == first.id
        client.responses.delete(follow.id)
        client.responses.delete(first.id)
