"""Beyond one host: a front (GATEWAY_NODES) over node gateways. Placement policy and discovery as pure unit
tests; the front over real node gateways (each in front of the fake upstream) for forwarding, streaming,
ejection and re-admission. The real runtime: tests/test_foundry_fleet.py."""

from __future__ import annotations

from app.policy.placement import ModelState, NodeView, place

# --- placement (pure) ----------------------------------------------------------------------------------------


def node(name: str, *, loaded: bool = False, busy: int = 0, limit: int = 4, healthy: bool = True,
         fits: bool = True, available: bool | None = True, front: int = 0) -> NodeView:
    state = ModelState(available=available, fits=fits, loaded=loaded, in_flight=busy, limit=limit)
    return NodeView(name, healthy, {"m": state}, {"m": front} if front else {})


def test_prefers_a_node_with_the_model_loaded_and_room() -> None:
    placed = place("m", [node("a"), node("b", loaded=True, busy=3), node("c", loaded=True, busy=1)])
    assert placed.order == ("c", "b", "a")
    assert placed.explanation == "node c: loaded there, 1/4 busy"


def test_scales_out_when_every_loaded_node_is_saturated() -> None:
    placed = place("m", [node("a", loaded=True, busy=4), node("b")])
    assert placed.order == ("b", "a")
    assert "scaling out" in placed.explanation
    assert dict((n, r) for n, _, r in placed.verdicts)["a"] == "loaded there but saturated, 4/4 busy"


def test_the_fronts_own_requests_count_before_the_next_poll() -> None:
    placed = place("m", [node("a", loaded=True, busy=0, front=4), node("b", loaded=True, busy=2)])
    assert placed.order == ("b", "a")


def test_skips_down_missing_and_too_big_with_reasons() -> None:
    placed = place("m", [node("a", healthy=False), node("b", available=False), node("c", fits=False), node("d")])
    assert placed.order == ("d",)
    reasons = {n: r for n, d, r in placed.verdicts if d == "skipped"}
    assert reasons == {"a": "down", "b": "does not have it", "c": "does not fit its RAM budget"}


def test_ties_go_round_the_nodes_not_to_the_first_by_name() -> None:
    nodes = [node("a", loaded=True), node("b", loaded=True), node("c", loaded=True)]
    assert [place("m", nodes, turn=turn).order[0] for turn in range(4)] == ["a", "b", "c", "a"]
    busy = [node("a", loaded=True, busy=1), node("b", loaded=True), node("c", loaded=True)]
    assert {place("m", busy, turn=turn).order[0] for turn in range(3)} == {"b", "c"}  # the least busy still first


def test_a_node_where_the_model_cools_down_is_skipped() -> None:
    cooling = NodeView("a", True, {"m": ModelState(available=True, loaded=True, limit=4, cooling_down=True)})
    placed = place("m", [cooling, node("b")])
    assert placed.order == ("b",)
    assert ("a", "skipped", "the model is cooling down there after failures") in placed.verdicts
