"""The completions ↔ chat translation and the upstream-body rewrites on their own (hypothesis for the
text round trip)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.errors import GatewayError
from app.openai import Target
from app.openai.chat import Chat, wants_usage
from app.openai.completions import chat_to_completion, completion_to_chat


def test_completion_request_becomes_one_user_message() -> None:
    body = {"model": "auto", "prompt": "def fib(n):", "max_tokens": 8, "best_of": 1, "logprobs": None,
            "temperature": 0.2, "stop": ["\n"]}
    chat = completion_to_chat(body)
    assert chat["messages"] == [{"role": "user", "content": "def fib(n):"}]
    assert {"prompt", "best_of", "logprobs"}.isdisjoint(chat)
    assert chat["temperature"] == 0.2 and chat["stop"] == ["\n"] and chat["max_tokens"] == 8
    assert completion_to_chat({"prompt": ["only one"]})["messages"][0]["content"] == "only one"


@pytest.mark.parametrize("field", ["echo", "suffix"])
def test_completion_only_features_are_refused_not_dropped(field: str) -> None:
    with pytest.raises(GatewayError) as info:
        completion_to_chat({"prompt": "x", field: True if field == "echo" else "tail"})
    assert info.value.status == 400 and info.value.param == field


def test_chat_completion_becomes_a_text_completion() -> None:
    chat = {"id": "chatcmpl-7", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    out = chat_to_completion(chat)
    assert out == {"id": "cmpl-7", "object": "text_completion", "created": 5, "model": "m",
                   "choices": [{"text": "hi", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                   "usage": chat["usage"]}


def test_stream_chunks_translate_too() -> None:
    role = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    piece = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "ab"}, "finish_reason": None}]}
    usage_only = {"id": "chatcmpl-1", "choices": [], "usage": {"completion_tokens": 2}}
    assert chat_to_completion(role)["choices"][0]["text"] == ""
    assert chat_to_completion(piece)["choices"][0]["text"] == "ab"
    assert chat_to_completion(usage_only)["choices"] == []
    assert chat_to_completion(usage_only)["usage"] == {"completion_tokens": 2}


def test_upstream_body_gets_the_routed_model_a_default_max_tokens_and_usage() -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream_options": {"foo": 1}}
    out = orjson.loads(Chat().payload(body, Target("m:1", stream=True, default_max_tokens=64))[0])
    assert out["model"] == "m:1" and out["max_tokens"] == 64
    assert out["stream_options"] == {"foo": 1, "include_usage": True}
    assert body["model"] == "auto" and "max_tokens" not in body  # the client's body is not changed
    kept = orjson.loads(Chat().payload({**body, "max_completion_tokens": 5},
                                       Target("m:1", stream=False, default_max_tokens=64))[0])
    assert "max_tokens" not in kept and "stream_options" in kept  # the client's own limit wins
    assert wants_usage({"stream_options": {"include_usage": True}})
    assert not wants_usage({"stream_options": "yes"})


@given(st.text(max_size=200))
def test_prompt_text_round_trips(text: str) -> None:
    chat = completion_to_chat({"prompt": text, "max_tokens": 3})
    assert chat["messages"] == [{"role": "user", "content": text}]
    reply = {"choices": [{"index": 0, "message": {"content": text}, "finish_reason": "length"}]}
    assert chat_to_completion(reply)["choices"][0]["text"] == text
