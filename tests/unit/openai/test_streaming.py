"""The SSE splitter and inspector on their own: event boundaries in any line-ending style, multi-line data,
comments, ``[DONE]`` with or without the space, an unterminated tail at EOF, and a stream cut at every byte
offset (hypothesis). The relay must hand on exactly the upstream's bytes and see exactly its events."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.openai.inspector import StreamInspector
from app.openai.sse import EventSplitter, event_data, event_json, split_events

CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'


def relay(chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    """What the proxy does: feed every chunk, then flush at EOF. Returns the bytes out and the events seen."""
    splitter = EventSplitter()
    out: list[bytes] = []
    for chunk in chunks:
        out.append(splitter.feed(chunk))
    out.append(splitter.flush())
    data = b"".join(out)
    seen = [event for block in out for event in split_events(block)]
    return data, seen


def clock() -> float:
    return 1.0


# --- the bugs found in review (each failed on the old splitter/inspector) ------------------------------


def test_done_without_the_space_is_recognised() -> None:
    inspector = StreamInspector(clock, strip_usage=False)
    inspector.block(b"data:[DONE]\n\n")
    assert inspector.done


def test_multi_line_data_is_joined() -> None:
    assert event_json(b'data: {"a":\ndata: 1}\n\n') == {"a": 1}
    assert event_data(b"data: one\ndata:two\n\n") == b"one\ntwo"


def test_separator_may_change_between_events() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\r\n\r\n") == b"data: 1\r\n\r\n"
    assert splitter.feed(b"data: 2\n\n") == b"data: 2\n\n"
    assert splitter.feed(b"data: 3\r\rdata: 4\n\r\n") == b"data: 3\r\rdata: 4\n\r\n"


def test_unterminated_tail_at_eof_is_handed_over() -> None:
    data, seen = relay([b"data: 1\n\ndata: [DONE]"])
    assert data == b"data: 1\n\ndata: [DONE]"
    assert [event_data(e) for e in seen] == [b"1", b"[DONE]"]
    inspector = StreamInspector(clock, strip_usage=False)
    inspector.block(b"data: 1\n\n")
    assert inspector.finish(b"data: [DONE]") == b"data: [DONE]\n\n"
    assert inspector.done


# --- the rest of the contract ------------------------------------------------------------------------


def test_comments_and_other_fields_carry_no_data() -> None:
    assert event_data(b": keep-alive\n\n") is None
    assert event_data(b"event: ping\nid: 3\n\n") is None
    assert event_json(b"event: message\ndata: {\"x\": 1}\nid: 7\n\n") == {"x": 1}


def test_cr_at_the_end_of_a_chunk_waits_for_the_next_byte() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\r\n\r") == b""  # the next byte may be the \n of this CRLF
    assert splitter.feed(b"\ndata: 2") == b"data: 1\r\n\r\n"
    assert splitter.flush() == b"data: 2"


def test_inspector_times_content_and_strips_usage() -> None:
    inspector = StreamInspector(clock, strip_usage=True)
    out = inspector.block(CHUNK + b"\n\n" + USAGE + b"\n\n" + b"data: [DONE]\n\n")
    assert out == CHUNK + b"\n\ndata: [DONE]\n\n"
    assert inspector.first_content == 1.0 and inspector.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert inspector.done


def test_inspector_keeps_crlf_events_byte_for_byte() -> None:
    inspector = StreamInspector(clock, strip_usage=True)
    block = CHUNK + b"\r\n\r\n" + USAGE + b"\r\n\r\n"
    assert inspector.block(block) == CHUNK + b"\r\n\r\n"


def test_error_event_is_noticed_in_any_line_style() -> None:
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        inspector = StreamInspector(clock, strip_usage=False)
        inspector.block(CHUNK + sep + b'data: {"error": {"message": "boom"}}' + sep)
        assert inspector.error == {"message": "boom"}


def test_a_stream_cut_at_every_byte_offset() -> None:
    stream = (b": hello\r\n\r\n" + CHUNK + b"\n\n" + b'data: {"a":\r\ndata: 2}\r\r' + USAGE + b"\r\n\r\n"
              + b"data:[DONE]\n\n")
    expected = [b": hello\r\n\r\n", CHUNK + b"\n\n", b'data: {"a":\r\ndata: 2}\r\r', USAGE + b"\r\n\r\n",
                b"data:[DONE]\n\n"]
    for cut in range(len(stream) + 1):
        data, seen = relay([stream[:cut], stream[cut:]])
        assert data == stream
        assert seen == expected, cut
    for a, b in itertools.combinations(range(0, len(stream), 7), 2):
        data, seen = relay([stream[:a], stream[a:b], stream[b:]])
        assert data == stream and seen == expected


# --- property: any stream, any cut -----------------------------------------------------------------------

_TERMINATORS = st.sampled_from([b"\n", b"\r\n", b"\r"])
_TEXT = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)


@st.composite
def sse_events(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """One serialised event and the data a client would see for it (None: no data field)."""
    lines: list[tuple[str, str]] = draw(st.lists(st.tuples(st.sampled_from(["data", "event", "id", ""]), _TEXT),
                                           min_size=1, max_size=4))
    raw = b""
    data: list[bytes] = []

    def terminator() -> bytes:
        # after a CR, an LF would merge with it into one CRLF line ending: a server cannot mean two
        return draw(st.sampled_from([b"\r\n", b"\r"])) if raw.endswith(b"\r") else draw(_TERMINATORS)

    for field, value in lines:
        encoded = value.encode()
        if field == "":
            raw += b":" + encoded  # a comment
        else:
            space = draw(st.booleans())
            raw += field.encode() + b":" + (b" " if space else b"") + encoded
            if field == "data":
                data.append(encoded[1:] if not space and encoded.startswith(b" ") else encoded)
        raw += terminator()
    raw += terminator()  # the blank line that ends the event
    return raw, (b"\n".join(data) if data else None)


@settings(max_examples=300, deadline=None)
@given(st.lists(sse_events(), min_size=1, max_size=6), st.lists(st.integers(min_value=0), max_size=6))
def test_any_stream_cut_anywhere(events: list[tuple[bytes, bytes | None]], cuts: list[int]) -> None:
    stream = b"".join(raw for raw, _ in events)
    offsets = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *offsets], [*offsets, len(stream)], strict=True)]
    data, seen = relay(chunks)
    assert data == stream  # not a byte lost, added or moved
    # the events seen carry the data a spec-following client would read (a CR at the very end of the
    # stream may end up as its own empty line: it carries no data either way)
    assert [event_data(e) for e in seen if event_data(e) is not None] == [d for _, d in events if d is not None]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers(-(2**53), 2**53), max_size=3), min_size=1, max_size=5),
       st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r"]), st.integers(min_value=1, max_value=9))
def test_json_events_round_trip_in_any_style(payloads: list[dict[str, int]], sep: bytes, step: int) -> None:
    stream = b"".join(b"data: " + orjson.dumps(p) + sep for p in payloads) + b"data: [DONE]" + sep
    inspector = StreamInspector(clock, strip_usage=False)
    splitter = EventSplitter()
    out = b""
    for i in range(0, len(stream), step):
        out += inspector.block(splitter.feed(stream[i:i + step]))
    out += inspector.finish(splitter.flush())
    assert out == stream and inspector.done
    assert [event_json(e) for e in split_events(out)][:-1] == payloads
