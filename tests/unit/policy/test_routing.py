"""The routing policy (pure): registry order, RAM budget, upstream inventory, breaker, pinning, errors."""

from __future__ import annotations

import json

import pytest

from app.core.errors import GatewayError
from app.core.registry import Registry, parse_registry
from app.policy.routing import choose


def registry() -> Registry:
    return parse_registry(json.dumps([
        {"name": "phi-4-mini", "task": "chat", "min_ram_gb": 8},
        {"name": "qwen2.5-7b-instruct", "task": "chat", "min_ram_gb": 16},
        {"name": "deepseek-r1-distill-qwen-7b", "task": "code", "min_ram_gb": 16},
        {"name": "tiny-chat", "task": ["chat", "code"], "min_ram_gb": 0.25, "upstream_id": "tiny-chat-generic-cpu:1",
         "aliases": ["tiny"]},
    ]))


def pick(budget: float, **kw: object) -> object:
    params: dict[str, object] = {"model": None, "task": None, "default_task": "chat", "budget_gb": budget, **kw}
    return choose(registry(), **params)  # type: ignore[arg-type]


def test_first_viable_in_registry_order() -> None:
    route = pick(32, task="chat")
    assert route.model.name == "phi-4-mini"  # type: ignore[attr-defined]
    assert [m.name for m in route.fallbacks] == ["qwen2.5-7b-instruct", "tiny-chat"]  # type: ignore[attr-defined]
    assert route.reason == "auto"  # type: ignore[attr-defined]


def test_ram_limit_skips_big_models_and_says_why() -> None:
    route = pick(7.5, task="chat")
    assert route.model.name == "tiny-chat"  # type: ignore[attr-defined]
    verdicts = {v.model: v for v in route.verdicts}  # type: ignore[attr-defined]
    assert verdicts["phi-4-mini"].decision == "skipped"
    assert "needs 8 GiB > 7.5 GiB budget" in verdicts["phi-4-mini"].reason
    assert verdicts["tiny-chat"].decision == "selected"


def test_default_task_and_auto_model() -> None:
    assert pick(32).task == "chat"  # type: ignore[attr-defined]
    assert pick(32, model="auto", task="code").model.name == "deepseek-r1-distill-qwen-7b"  # type: ignore[attr-defined]


def test_upstream_inventory_filters_candidates() -> None:
    route = pick(32, task="code", available=frozenset({"tiny-chat"}))
    assert route.model.name == "tiny-chat"  # type: ignore[attr-defined]
    reasons = {v.model: v.reason for v in route.verdicts}  # type: ignore[attr-defined]
    assert reasons["deepseek-r1-distill-qwen-7b"] == "not available on the upstream"


def test_cooling_models_are_skipped() -> None:
    route = pick(32, task="chat", cooling={"phi-4-mini": "cooling down after 3 failures (last: timeout)"})
    assert route.model.name == "qwen2.5-7b-instruct"  # type: ignore[attr-defined]
    reasons = {v.model: v.reason for v in route.verdicts}  # type: ignore[attr-defined]
    assert reasons["phi-4-mini"] == "cooling down after 3 failures (last: timeout)"  # the breaker's own words


@pytest.mark.parametrize("name", ["tiny-chat", "TINY", "tiny-chat-generic-cpu:1", "tiny-chat-generic-cpu:7"])
def test_pinning_by_name_alias_or_upstream_id(name: str) -> None:
    route = pick(32, model=name, task="code")
    assert route.model.name == "tiny-chat"  # type: ignore[attr-defined]
    assert route.reason == "pinned" and route.task == "code"  # type: ignore[attr-defined]


def test_pinned_task_falls_back_to_models_own_task() -> None:
    assert pick(32, model="phi-4-mini", task="code").task == "chat"  # type: ignore[attr-defined]


def test_unknown_task_is_400_listing_known_tasks() -> None:
    with pytest.raises(GatewayError) as info:
        pick(32, task="poetry")
    assert info.value.status == 400 and "Known tasks: chat, code" in info.value.message


def test_unknown_model_is_404() -> None:
    with pytest.raises(GatewayError) as info:
        pick(32, model="gpt-7")
    assert info.value.status == 404 and info.value.code == "model_not_found"


def test_nothing_fits_is_503_with_sizes() -> None:
    with pytest.raises(GatewayError) as info:
        pick(0.1, task="code")
    err = info.value
    assert err.status == 503 and err.code == "no_viable_model"
    assert "'tiny-chat', needs 0.25 GiB" in err.message and "budget is 0.1 GiB" in err.message


def test_nothing_available_names_each_reason() -> None:
    with pytest.raises(GatewayError) as info:
        pick(32, task="code", available=frozenset())
    assert "not available on the upstream" in info.value.message


def test_pinned_model_over_budget_or_missing_is_503() -> None:
    with pytest.raises(GatewayError, match="needs 16 GiB"):
        pick(8, model="qwen2.5-7b-instruct")
    with pytest.raises(GatewayError, match="not available on the upstream"):
        pick(32, model="phi-4-mini", available=frozenset({"tiny-chat"}))


# --- capabilities ---------------------------------------------------------------------------------------------


def capable() -> Registry:
    return parse_registry(json.dumps([
        {"name": "big-embed", "task": "embeddings", "min_ram_gb": 64},
        {"name": "plain-chat", "task": "chat", "min_ram_gb": 1},
        {"name": "tool-chat", "task": "chat", "min_ram_gb": 2, "capabilities": ["chat", "tools"]},
        {"name": "small-embed", "task": "embeddings", "min_ram_gb": 0.5},
        {"name": "whisper", "task": "transcription", "min_ram_gb": 1},
    ]))


def route_for(need: set[str], **kw: object) -> object:
    params: dict[str, object] = {"model": None, "task": None, "default_task": "chat", "budget_gb": 16,
                                 "need": frozenset(need), **kw}
    return choose(capable(), **params)  # type: ignore[arg-type]


def test_capabilities_default_from_the_task() -> None:
    entries = {e.name: e.capabilities for e in capable()}
    assert entries == {"big-embed": ("embeddings",), "plain-chat": ("chat",), "tool-chat": ("chat", "tools"),
                       "small-embed": ("embeddings",), "whisper": ("transcription",)}


def test_a_request_with_tools_goes_to_a_tool_capable_model() -> None:
    route = route_for({"chat", "tools"})
    assert route.model.name == "tool-chat"  # type: ignore[attr-defined]
    reasons = {v.model: v.reason for v in route.verdicts}  # type: ignore[attr-defined]
    assert reasons["plain-chat"] == "no tools"


def test_embeddings_with_auto_and_no_header_pick_the_best_embedding_model_that_fits() -> None:
    route = route_for({"embeddings"})
    assert route.model.name == "small-embed" and route.task == "embeddings"  # type: ignore[attr-defined]
    reasons = {v.model: v.reason for v in route.verdicts}  # type: ignore[attr-defined]
    assert reasons["big-embed"].startswith("needs 64 GiB")
    assert route_for({"transcription"}).model.name == "whisper"  # type: ignore[attr-defined]


def test_a_pinned_model_without_the_capability_is_a_clear_400() -> None:
    with pytest.raises(GatewayError) as info:
        route_for({"embeddings"}, model="plain-chat")
    assert info.value.status == 400 and "'plain-chat' cannot do embeddings" in info.value.message


def test_a_feature_no_model_has_is_a_400_naming_it() -> None:
    with pytest.raises(GatewayError) as info:
        route_for({"chat", "json_schema"})
    assert info.value.status == 400 and "json_schema" in info.value.message
    assert "plain-chat, tool-chat" in info.value.message and '"capabilities": ["chat", "json_schema"]' in \
        info.value.message


def test_tools_with_auto_and_no_capable_model_is_a_400_not_a_503() -> None:
    """Issue 24: one model too big for the host, none with tools: the answer is what to declare, not 'try later'."""
    registry = parse_registry(json.dumps([{"name": "big", "task": "chat", "min_ram_gb": 64},
                                          {"name": "small", "task": "chat", "min_ram_gb": 1}]))
    with pytest.raises(GatewayError) as info:
        choose(registry, model="auto", task=None, default_task="chat", budget_gb=15,
               need=frozenset({"chat", "tools"}))
    assert info.value.status == 400 and info.value.code == "unsupported_value"
    assert "tool calls" in info.value.message and '"capabilities": ["chat", "tools"]' in info.value.message


def test_unknown_capabilities_are_rejected_by_the_registry() -> None:
    with pytest.raises(ValueError, match="capabilities must be a list of"):
        parse_registry(json.dumps([{"name": "x", "task": "chat", "min_ram_gb": 1, "capabilities": ["telepathy"]}]))


def test_a_missing_capable_model_is_not_retried_unless_another_is_only_cooling_down() -> None:
    """Review of issue 32: the 503 that names the command to bring a model told the SDK never to retry, also when
    the capable model the runtime has was only cooling down after failures (it is back in seconds)."""
    two = parse_registry(json.dumps([
        {"name": "here", "task": "chat", "min_ram_gb": 1, "capabilities": ["chat", "tools"]},
        {"name": "absent", "task": "chat", "min_ram_gb": 1, "capabilities": ["chat", "tools"]},
    ]))
    params: dict[str, object] = {"model": None, "task": "chat", "default_task": "chat", "budget_gb": 8,
                                 "need": frozenset({"chat", "tools"}), "available": frozenset({"here"})}
    with pytest.raises(GatewayError) as cooling:
        choose(two, cooling={"here": "circuit open after 5 failures"}, **params)  # type: ignore[arg-type]
    assert cooling.value.headers == {"retry-after": "10"} and "foundry-gateway pull absent" in cooling.value.message
    with pytest.raises(GatewayError) as missing:
        choose(two, **{**params, "available": frozenset()})  # type: ignore[arg-type]
    assert missing.value.headers.get("x-should-retry") == "false"


def test_verdicts_words_are_the_ones_users_read() -> None:
    from app.policy.routing import Decision, RamSource, RankBy, RouteKind, Skip

    assert [d.value for d in Decision] == ["selected", "fallback", "skipped"]
    assert [s.value for s in Skip] == ["not allowed for this key", "not available on the upstream"]
    assert [k.value for k in RouteKind] == ["pinned", "auto"] and [r.value for r in RamSource] == ["registry",
                                                                                                  "measured"]
    assert [r.value for r in RankBy] == ["order", "rating", "latency"]
    route = pick(32, task="code", available=frozenset({"tiny-chat"}))
    assert route.header.startswith("auto; ")  # type: ignore[attr-defined]
    shown = json.loads(json.dumps(route.as_dict()))  # type: ignore[attr-defined]
    assert shown["reason"] == "auto" and {c["decision"] for c in shown["candidates"]} == {"selected", "skipped"}
    assert {c["ram_source"] for c in shown["candidates"]} == {"registry"}
