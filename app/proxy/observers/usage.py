"""A finished request in the usage book (``app.access.usage``): who, which model, endpoint and task, what it
spent — tokens the runtime processed, the runtime's time it held (queue excluded), what that costs where the
registry prices the model."""

from __future__ import annotations

from collections.abc import Callable

from app.access.usage import UsageBook, counter
from app.core.registry import Registry
from app.proxy.outcome import Outcome

_INPUT, _OUTPUT, _ESTIMATED, _CACHED, _ERROR = (counter(name) for name in (
    "input_tokens", "output_tokens", "estimated_requests", "cached_requests", "error_requests"))
_RUNTIME, _LATENCY, _TTFT, _TTFT_N, _COST, _PRICED = (counter(name) for name in (
    "runtime_seconds", "latency_seconds", "ttft_seconds", "ttft_requests", "cost", "priced_requests"))


class UsageObserver:
    __slots__ = ("book", "registry")

    def __init__(self, book: UsageBook, registry: Callable[[], Registry]) -> None:
        self.book = book
        self.registry = registry

    def observe(self, outcome: Outcome) -> None:
        call = outcome.call
        model = outcome.model or ""
        dims = (_name(call.key.name) if call.key is not None else "", model, call.endpoint, _name(outcome.task or ""),
                outcome.node or "", "1" if call.priority == "batch" else "0")
        counts: list[tuple[int, float]] = [(_LATENCY, outcome.duration)]
        if outcome.status >= 400 or (outcome.status == 0 and not outcome.aborted):
            counts.append((_ERROR, 1))
        if outcome.ttft > 0:
            counts += [(_TTFT, outcome.ttft), (_TTFT_N, 1)]
        generated = outcome.cache is None or outcome.cache.generated
        prompt = completion = 0
        if not generated:
            counts.append((_CACHED, 1))  # answered without the runtime: no tokens, no runtime time, no cost
        elif outcome.usage:
            prompt, completion = outcome.tokens("prompt_tokens"), outcome.tokens("completion_tokens")
            counts += [(_INPUT, prompt), (_OUTPUT, completion)]
            if outcome.usage.get("estimated"):
                counts.append((_ESTIMATED, 1))
        runtime = outcome.upstream_wait if generated else 0.0
        if runtime:
            counts.append((_RUNTIME, runtime))
        entry = self.registry().lookup(model) if model else None
        if entry is not None and entry.prices is not None:
            counts += [(_COST, entry.prices.cost(prompt, completion, runtime)), (_PRICED, 1)]
        self.book.add(dims, counts)


def _name(value: str) -> str:
    return value.replace("\x1f", " ")  # the one character a store's tally field may not hold
