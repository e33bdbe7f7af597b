"""The semantic cache's index (``GATEWAY_CACHE_SEMANTIC``): a kept answer served for a question that is close in
meaning to the one it answered — opt-in, because near-duplicates are not duplicates.

Only requests that match exactly in everything else share a *group* (same endpoint, model, key scope, system
prompt and conversation, sampling fields; ``Endpoint.by_meaning`` leaves the last user message out); within a
group the last user messages are compared by the cosine of their embeddings (the registry's embedding model, asked
through the gateway itself). An in-process numpy matrix per group, least recently used groups dropped first; an
entry the cache has since dropped is forgotten when it is found missing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from app.openai import Endpoint

Vector = NDArray[np.float32]
Handle = Callable[[dict[str, Any], Any, Any, Endpoint], Awaitable[None]]
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
    """Embeddings asked of this gateway itself: ``handle`` is the proxy's request handler, so the question goes
    to the registry's embedding model as any ``/v1/embeddings`` request would (routed, admitted, logged, cached)."""

    async def embed(text: str) -> list[float] | None:
        body = orjson.dumps({"model": "auto", "input": text})
        sent: list[dict[str, Any]] = []
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Future()  # this "client" never leaves; the request's watcher is cancelled at its end
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": endpoint.path,
                 "headers": [(b"content-type", b"application/json"), (task_header, b"embeddings")]}
        await handle(scope, receive, send, endpoint)
        if not sent or sent[0].get("status") != 200:
            return None
        answer = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
        values = answer["data"][0]["embedding"]
        return values if isinstance(values, list) else None

    return embed
