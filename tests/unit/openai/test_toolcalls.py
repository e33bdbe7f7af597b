"""Tool calls fixed in flight (app.openai.toolcalls): the text Foundry Local streams as content becomes OpenAI
``tool_calls``, whatever the chunk boundaries; nothing the model wrote is lost."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.openai.toolcalls import ToolCallChunks, ToolCallStream, extract, fix_answer

WEATHER = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": {"from": 1, "to": 3}}}\n'
           '</tool_call>')


def run(pieces: list[str]) -> tuple[str, dict[int, dict[str, Any]]]:
    """Feed the pieces; the content sent and the calls rebuilt the way the openai SDK does (by index)."""
    stream = ToolCallStream()
    deltas = [d for piece in pieces for d in stream.feed(piece)] + stream.end()
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", []):
            slot = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in call:
                assert slot["id"] is None, "a call's id is sent once"
                slot["id"], slot["name"] = call["id"], call["function"]["name"]
            slot["arguments"] += call["function"]["arguments"]
    return content, calls


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def test_one_call_in_one_piece() -> None:
    content, calls = run([WEATHER])
    assert content == ""
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "days": {"from": 1, "to": 3}}


def test_arguments_stream_as_they_are_written() -> None:
    stream = ToolCallStream()
    head = stream.feed('<tool_call>{"name": "f", "arguments": {"q": "hel')
    assert head[0]["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}
    assert head[1]["tool_calls"][0]["function"]["arguments"] == '{"q": "hel'
    more = stream.feed('lo"}')  # the arguments object closes here
    assert more == [{"tool_calls": [{"index": 0, "function": {"arguments": 'lo"}'}}]}]
    assert stream.feed("}</tool_call>") == []  # the call's own brace and its tag


def test_text_around_and_between_calls() -> None:
    text = f"Let me check.{WEATHER}\n{WEATHER.replace('Paris', 'Oslo')}\n"
    content, calls = run([text])
    assert content == "Let me check."
    assert [json.loads(c["arguments"])["city"] for c in calls.values()] == ["Paris", "Oslo"]
    assert calls[0]["id"] != calls[1]["id"]


def test_not_a_call_stays_text() -> None:
    text = "a <tool_call>not json</tool_call> b <tool_c"
    assert run([text]) == (text, {})
    assert extract(text) == (text, [])


def test_unfinished_call_is_not_lost() -> None:
    content, calls = run(['<tool_call>{"arguments": {"x": 1}, "na'])
    assert content == '<tool_call>{"arguments": {"x": 1}, "na' and calls == {}


def test_call_cut_before_its_tag_keeps_valid_arguments() -> None:
    content, calls = run(['<tool_call>{"name": "f", "arguments": {"a": 1}}'])  # then the end of the stream
    assert content == "" and json.loads(calls[0]["arguments"]) == {"a": 1}


def test_close_tag_and_braces_inside_argument_strings() -> None:
    text = '<tool_call>{"name": "f", "arguments": {"s": "x</tool_call>y}{"}}</tool_call>after'
    for pieces in ([text], list(text)):
        content, calls = run(pieces)
        assert json.loads(calls[0]["arguments"]) == {"s": "x</tool_call>y}{"} and content == "after"
    assert extract(text)[1][0]["function"]["arguments"] == '{"s": "x</tool_call>y}{"}'  # as written, both ways


def test_tag_in_prose_is_released_as_text() -> None:
    stream = ToolCallStream()
    deltas = stream.feed("Use the <tool_call> tag")
    assert "".join(d["content"] for d in deltas) == "Use the <tool_call> tag" and stream.end() == []


def test_invalid_escape_in_a_name_stays_text() -> None:
    text = '<tool_call>{"name": "get\\_weather", "arguments": {}}</tool_call>'
    assert run([text]) == (text, {})


def test_usage_stays_on_one_chunk() -> None:
    chunks = ToolCallChunks()
    out = chunks.chunk({"id": "c", "usage": {"total_tokens": 3},
                        "choices": [{"index": 0, "delta": {"content": "hi " + WEATHER}, "finish_reason": "stop"}]})
    assert sum("usage" in chunk for chunk in out) == 1 and "usage" in out[-1]


def test_arguments_first_sent_whole() -> None:
    content, calls = run(['<tool_call>{"arguments": {"x": 1}, "name": "g"}</tool_call>'])
    assert content == "" and calls[0]["name"] == "g" and json.loads(calls[0]["arguments"]) == {"x": 1}


text_part = st.text(alphabet=st.sampled_from(list("ab <>/{}\"\n tool_call")), max_size=12)
call = st.builds(lambda name, args: {"name": name, "arguments": args},
                 st.text(alphabet="abcxyz_", min_size=1, max_size=8),
                 st.dictionaries(st.text(alphabet="kq\"{}<>/ ", max_size=5),
                                 st.one_of(st.integers(), st.text(max_size=6),
                                           st.dictionaries(st.text(max_size=3), st.booleans(), max_size=2)),
                                 max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(text_part, call, st.sampled_from(["", " ", "\n"])), min_size=1, max_size=3),
       text_part, st.lists(st.integers(min_value=0, max_value=10_000), max_size=25))
def test_any_split_rebuilds_the_calls(parts: list[tuple[str, dict[str, Any], str]], tail: str,
                                      cuts: list[int]) -> None:
    """Streamed in pieces cut anywhere, the calls come out as the whole text's, and so does the content."""
    text = "".join(f"{before}<tool_call>{space}{json.dumps(c)}{space}</tool_call>" for before, c, space in parts)
    text += tail
    whole_content, whole_calls = extract(text)
    content, calls = run(split(text, cuts))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole_calls]
    assert content.rstrip() == (whole_content or "").rstrip()


def test_json_answer_fixed() -> None:
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": WEATHER}, "finish_reason": "stop"}]}
    fixed = fix_answer(answer)["choices"][0]
    assert fixed["finish_reason"] == "tool_calls"
    assert fixed["message"]["content"] is None
    assert fixed["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_chunks_keep_the_envelope_and_set_the_finish_reason() -> None:
    chunks = ToolCallChunks()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "c1", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = chunks.chunk(chunk({"role": "assistant", "content": ""}))
    out += chunks.chunk(chunk({"content": WEATHER[:20]}))
    out += chunks.chunk(chunk({"content": WEATHER[20:]}))
    out += chunks.chunk(chunk({}, "stop"))
    assert all(c["id"] == "c1" and c["object"] == "chat.completion.chunk" for c in out)
    assert out[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(c["choices"][0]["delta"].get("content") for c in out)


# --- the stream and the JSON answer make the same message (issue 22) ------------------------------------------


def merged(pieces: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """What a client rebuilds from the stream: content (None if only calls came) and (name, arguments)."""
    content, calls = run(pieces)
    return (content if content or not calls else None), [(c["name"], c["arguments"]) for c in calls.values()]


def whole(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    content, calls = extract(text)
    return content, [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


CASES = {
    "an unclosed call followed by text": (
        '<tool_call>{"name": "f", "arguments": {"a": 1}}\nThen I explain.', "Then I explain.", ["f"]),
    "an unclosed first call then a closed second": (
        '<tool_call>{"name": "f", "arguments": {}}<tool_call>{"name": "g", "arguments": {"b": 2}}</tool_call>',
        None, ["f", "g"]),
    "an empty name": ('<tool_call>{"name": "", "arguments": {}}</tool_call>',
                      '<tool_call>{"name": "", "arguments": {}}</tool_call>', []),
    "junk after the arguments": ('<tool_call>{"name": "f", "arguments": {"a": 1} junk}</tool_call>',
                                 "junk}</tool_call>", ["f"]),
    "leading blank lines": ('\n\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\n', None, ["f"]),
    "a tag inside a fenced code block": ('Like this:\n```\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\n```',
                                         'Like this:\n```\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\n```',
                                         []),
    "a missing outer brace before text": ('<tool_call>{"name": "f", "arguments": {"a": 1}\nmore text',
                                          "more text", ["f"]),
}


def test_where_they_disagreed_both_make_the_same_message() -> None:
    for what, (text, content, names) in CASES.items():
        expected = whole(text)
        assert expected[0] == content, what
        assert [name for name, _ in expected[1]] == names, what
        for size in (1, 2, 3, 7, len(text)):
            pieces = [text[i:i + size] for i in range(0, len(text), size)]
            assert merged(pieces) == expected, (what, size)


fragment = st.sampled_from(["<tool_call>", "</tool_call>", "<tool_", "```", "`", "{", "}", '"', "\\", ",", ":",
                            '"name"', '"arguments"', ' "f"', "\n", " ", "a", "x y", '{"name": "f", "arguments": {',
                            '{"arguments": {"k": 1}, "name": "g"}', '"</tool_call>"', "[1]"])


@settings(max_examples=600, deadline=None)
@given(st.lists(fragment, max_size=16), st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_any_text_any_split_the_stream_equals_the_json_answer(parts: list[str], cuts: list[int]) -> None:
    """Whatever the model writes — calls, half calls, junk, fences — and wherever the stream is cut, the message
    a client rebuilds from the stream is the JSON answer's."""
    text = "".join(parts)
    assert merged(split(text, cuts)) == whole(text)
    assert merged(list(text)) == whole(text)


def test_n_choices_each_have_their_own_parser() -> None:
    chunks = ToolCallChunks()

    def chunk(index: int, content: str | None = None, finish: str | None = None) -> dict[str, Any]:
        delta = {"content": content} if content is not None else {}
        return {"id": "c", "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    first, second = WEATHER, WEATHER.replace("Paris", "Oslo")
    out: list[dict[str, Any]] = []
    for a, b in itertools.zip_longest([first[i:i + 9] for i in range(0, len(first), 9)],
                                      [second[i:i + 5] for i in range(0, len(second), 5)]):
        if a is not None:
            out += chunks.chunk(chunk(0, a))
        if b is not None:
            out += chunks.chunk(chunk(1, b))
    out += chunks.chunk(chunk(0, finish="stop")) + chunks.chunk(chunk(1, finish="stop"))
    for index, city in ((0, "Paris"), (1, "Oslo")):
        mine = [c["choices"][0] for c in out if c["choices"][0]["index"] == index]
        arguments = "".join(call["function"].get("arguments", "") for choice in mine
                            for call in choice["delta"].get("tool_calls", []))
        assert json.loads(arguments)["city"] == city
        assert mine[-1]["finish_reason"] == "tool_calls"
        assert not any(choice["delta"].get("content") for choice in mine)
