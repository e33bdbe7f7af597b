"""A batch's input file: every problem reported with its line, nothing of a bad file run; any bytes at all give
lines or problems, never an exception."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from app.batches.lines import read_lines

URL = "/v1/chat/completions"


def _line(custom_id: str, url: str = URL, **extra: object) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                       "body": {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}, **extra}).encode()


def test_good_lines_in_order_blank_lines_skipped() -> None:
    raw = b"\n".join([_line("a"), b"", _line("b", task="code"), b"  "])
    lines, errors = read_lines(raw, URL, 100)
    assert errors == []
    assert [(x.index, x.number, x.custom_id, x.task) for x in lines] == [(0, 1, "a", None), (1, 3, "b", "code")]


def test_each_problem_names_its_line() -> None:
    raw = b"\n".join([_line("a"), b"{not json", _line("b", url="/v1/moderations"), _line("a"), b"[1]",
                      json.dumps({"custom_id": "c", "url": URL, "body": "text"}).encode(),
                      json.dumps({"custom_id": "d", "method": "GET", "url": URL, "body": {}}).encode(),
                      json.dumps({"url": URL, "body": {}}).encode()])
    _, errors = read_lines(raw, URL, 100)
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "invalid_json_line"), (3, "invalid_url"), (4, "duplicate_custom_id"), (5, "invalid_json_line"),
        (6, "invalid_request"), (7, "invalid_method"), (8, "missing_required_parameter")]
    assert "/v1/moderations" in errors[1]["message"] and "'a'" in errors[2]["message"]


def test_an_empty_file_and_too_many_lines_are_problems() -> None:
    assert read_lines(b"\n \n", URL, 10)[1][0]["code"] == "empty_file"
    assert read_lines(b"\n".join(_line(str(i)) for i in range(3)), URL, 2)[1][0]["code"] == "too_many_requests"


@given(st.binary(max_size=400))
def test_any_bytes_give_lines_or_problems(raw: bytes) -> None:
    lines, errors = read_lines(raw, URL, 1000)
    assert lines or errors
    assert len({line.custom_id for line in lines}) == len(lines)


@given(st.lists(st.text(min_size=1, max_size=20), max_size=30))
def test_custom_ids_are_unique_or_reported(ids: list[str]) -> None:
    lines, errors = read_lines(b"\n".join(_line(i) for i in ids), URL, 1000)
    seen: set[str] = set()
    expected = 0
    for custom_id in ids:
        if not custom_id.strip() or custom_id in seen:
            expected += 1
        seen.add(custom_id)
    assert [line.custom_id for line in lines] == list(dict.fromkeys(i for i in ids if i.strip()))
    assert len(errors) == (expected if ids else 1)


def test_a_byte_order_mark_before_the_first_line_is_no_part_of_it() -> None:
    """Finding 16: a file saved by an editor that writes a UTF-8 BOM runs."""
    lines, errors = read_lines(b"\xef\xbb\xbf" + _line("a") + b"\n" + _line("b"), URL, 10)
    assert errors == [] and [x.custom_id for x in lines] == ["a", "b"]


def test_a_line_longer_than_a_request_body_is_a_problem() -> None:
    lines, errors = read_lines(_line("a") + b"\n" + _line("b", pad="x" * 500), URL, 10, max_line_bytes=300)
    assert [x.custom_id for x in lines] == ["a"] and [(e["line"], e["code"]) for e in errors] == [(2, "line_too_long")]


def test_the_endpoints_a_batch_may_call_are_the_openai_tables_json_ones() -> None:
    from app.batches.lines import BATCHABLE
    from app.openai import ENDPOINTS

    assert BATCHABLE == ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")
    assert set(BATCHABLE) | {"/v1/audio/transcriptions"} == {e.path for e in ENDPOINTS}  # a multipart upload: not
