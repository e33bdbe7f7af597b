"""The semantic cache's index: the nearest question within a group only, at or over the threshold; the oldest
question makes room; a vector that cannot be compared is refused."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from app.proxy.stages.semantic import SemanticIndex


def _v(*values: float) -> np.ndarray:
    vector = SemanticIndex.vector(list(values))
    assert vector is not None
    return vector


def test_nearest_within_the_group_at_the_threshold() -> None:
    index = SemanticIndex(0.95)
    index.add("g", _v(1, 0, 0), "k1")
    index.add("g", _v(0, 1, 0), "k2")
    found = index.nearest("g", _v(1, 0.1, 0))
    assert found is not None and found[0] == "k1" and found[1] >= 0.95
    assert index.nearest("g", _v(1, 1, 0)) is None  # cos 0.707 to both
    assert index.nearest("other", _v(1, 0, 0)) is None
    assert index.nearest("g", _v(1, 0)) is None  # another embedding model's dimensions
    index.forget("g", "k1")
    assert index.nearest("g", _v(1, 0, 0)) is None


def test_the_oldest_question_makes_room_and_groups_are_bounded() -> None:
    index = SemanticIndex(0.99, max_groups=2, max_per_group=2)
    for i, key in enumerate(("a", "b", "c")):
        index.add("g", _v(*[1.0 if j == i else 0.0 for j in range(3)]), key)
    assert index.nearest("g", _v(1, 0, 0)) is None and index.nearest("g", _v(0, 0, 1)) == ("c", 1.0)
    index.add("h", _v(1, 0, 0), "x")
    index.add("i", _v(1, 0, 0), "y")  # "g" was used least recently
    assert index.nearest("g", _v(0, 0, 1)) is None


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=8))
def test_a_vector_is_a_unit_vector_or_refused(values: list[float]) -> None:
    vector = SemanticIndex.vector(values)
    if vector is not None:
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3
    else:
        assert not values or not all(np.isfinite(values)) or not any(values)
