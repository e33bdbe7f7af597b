"""The semantic cache's index (``GATEWAY_CACHE_SEMANTIC``): a kept answer served for a question that is close in
meaning to the one it answered — opt-in, because near-duplicates are not duplicates.

Only requests that match exactly in everything else share a *group* (same endpoint, model, key scope, system
prompt and conversation, sampling fields; ``Endpoint.by_meaning`` leaves the last user message out); within a
group the last user messages are compared by the cosine of their embeddings (the registry's embedding model, asked
through the gateway itself). An in-process numpy matrix per group, least recently used groups dropped first; an
entry the cache has since dropped is forgotten when it is found missing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np
import orjson
from numpy.typing import NDArray

from app.openai import Endpoint
from app.proxy.inprocess import Handle, ask

Vector = NDArray[np.float32]
MAX_GROUPS = 4096
MAX_PER_GROUP = 256


class _Group:
    __slots__ = ("keys", "matrix")

    def __init__(self, dimensions: int) -> None:
        self.matrix: Vector = np.empty((0, dimensions), dtype=np.float32)
        self.keys: list[str] = []


class SemanticIndex:
    def __init__(self, threshold: float, max_groups: int = MAX_GROUPS, max_per_group: int = MAX_PER_GROUP) -> None:
        self.threshold = threshold
        self.max_groups = max_groups
        self.max_per_group = max_per_group
        self._groups: OrderedDict[str, _Group] = OrderedDict()

    @staticmethod
    def vector(values: list[float]) -> Vector | None:
        """A unit vector (cosine is then a dot product), or None for one that cannot be compared."""
        array = np.asarray(values, dtype=np.float64)
        norm = float(np.linalg.norm(array)) if array.ndim == 1 and array.size else 0.0
        return (array / norm).astype(np.float32) if np.isfinite(norm) and norm > 0 else None

    def nearest(self, group: str, vector: Vector) -> tuple[str, float] | None:
        """The closest kept question's cache key and its similarity, if it reaches the threshold."""
        found = self._groups.get(group)
        if found is None or not found.keys or found.matrix.shape[1] != vector.shape[0]:
            return None
        self._groups.move_to_end(group)
        scores = found.matrix @ vector
        best = int(np.argmax(scores))
        score = float(scores[best])
        return (found.keys[best], score) if score >= self.threshold else None

    def add(self, group: str, vector: Vector, key: str) -> None:
        found = self._groups.get(group)
        if found is None or found.matrix.shape[1] != vector.shape[0]:  # a new group, or a new embedding model
            found = self._groups[group] = _Group(vector.shape[0])
            while len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)
        self._groups.move_to_end(group)
        if key in found.keys:
            return
        start = max(0, len(found.keys) - self.max_per_group + 1)  # the oldest question makes room
        found.matrix = np.vstack([found.matrix[start:], vector[None, :]])
        found.keys = [*found.keys[start:], key]

    def forget(self, group: str, key: str) -> None:
        found = self._groups.get(group)
        if found is None or key not in found.keys:
            return
        i = found.keys.index(key)
        found.matrix = np.delete(found.matrix, i, axis=0)
        del found.keys[i]


def embedder(handle: Handle, endpoint: Endpoint, task_header: bytes) -> Callable[[str], Awaitable[list[float] | None]]:
    """Embeddings asked of this gateway itself (``app.proxy.inprocess``): the question goes to the registry's
    embedding model as any ``/v1/embeddings`` request would (routed, admitted, logged, cached)."""

    async def embed(text: str) -> list[float] | None:
        answer = await ask(handle, endpoint, orjson.dumps({"model": "auto", "input": text}),
                           [(task_header, b"embeddings")])
        if answer.status != 200:
            return None
        values = orjson.loads(answer.body)["data"][0]["embedding"]
        return values if isinstance(values, list) else None

    return embed
