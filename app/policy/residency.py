"""Which models may run now, when they cannot all be loaded at once: no swap thrash.

Two models that do not fit the RAM budget together, with requests for both arriving interleaved, would
make a runtime load A, unload it for B, load A again… for every request (ABAB). Each swap costs a model
load — seconds to minutes on a real model. So requests are grouped by model (AABB):

- the **running set** is the models with requests in flight; a request for a model in it runs at once,
  and so does one for a model that fits alongside it (by the registry's ``min_ram_gb`` and the budget);
- a request for a model that does not fit waits, grouped with the other requests for the same model;
  waiting groups are served in the order they formed;
- a running model keeps taking its own new requests — that is the grouping — but only for ``hold``
  seconds once another group waits; after that its new requests queue too, it drains, and the next group
  gets the runtime. ``hold = 0`` is plain FIFO alternation;
- a running model whose last request just finished keeps its turn for ``linger`` seconds (while within
  its hold): a client sending requests back to back is a few milliseconds from its next one, and ending
  the turn in that gap would cost a swap per request all the same;
- while any group waits, a newcomer that is not running queues behind it even if it would fit: it
  must not stretch the running set the waiting group is waiting out.

Pure bookkeeping on the event loop with an injected clock; the inventory does the actual unloading
(least recently used, never a model in use) once a group's turn comes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Set

from app.core.errors import GatewayError


class Residency:
    def __init__(self, fits: Callable[[Set[str]], bool], hold: float, linger: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fits = fits
        self.hold = hold
        self.linger = linger
        self.clock = clock
        self.active: dict[str, int] = {}  # requests in flight per running model (0 while it lingers)
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self.turn_started: dict[str, float] = {}  # when a running model's current turn began
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}  # by model, in the order the groups formed
        self.turns = 0  # times a model started a turn on the runtime (for status pages and tests)

    def running(self) -> set[str]:
        return set(self.active)

    async def enter(self, name: str) -> float:
        """Wait until ``name`` may run; returns the seconds waited. Pair with ``leave``. A model that does not
        fit even alone (beside what never unloads) is refused at once: waiting would hold everyone behind it."""
        if not self.fits({name}):
            raise _never_fits(name)
        if self._may_run_now(name):
            self._admit(name)
            return 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiting.setdefault(name, deque()).append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.leave(name)  # admitted as we were cancelled: give the place back
            else:
                group = self.waiting.get(name)
                if group is not None and waiter in group:
                    group.remove(waiter)
                    if not group:
                        del self.waiting[name]
                        self._dispatch()  # a group that vanished may have been first in line
            raise
        return loop.time() - started

    def leave(self, name: str) -> None:
        count = self.active.get(name, 0) - 1
        self.active[name] = max(0, count)
        if count > 0:
            return
        within_hold = self.clock() - self.turn_started.get(name, 0.0) < self.hold
        if self.linger > 0 and within_hold and any(other != name for other in self.waiting):
            loop = asyncio.get_running_loop()
            self._lingering[name] = loop.call_later(self.linger, self._end_turn, name)
            return
        self._end_turn(name)

    def _end_turn(self, name: str) -> None:
        self._lingering.pop(name, None)
        if self.active.get(name) == 0:
            del self.active[name]
            self.turn_started.pop(name, None)
            self._dispatch()

    def _may_run_now(self, name: str) -> bool:
        if self.waiting:
            self._refuse_impossible()
        if name in self.active:
            if not any(other != name for other in self.waiting):
                return True
            return self.clock() - self.turn_started[name] < self.hold  # its group's hold is not over yet
        if self.waiting:
            return False  # others are waiting for the runtime: queue behind them
        return self.fits(self.running() | {name})

    def _admit(self, name: str, count: int = 1) -> None:
        lingering = self._lingering.pop(name, None)
        if lingering is not None:
            lingering.cancel()
        if name not in self.active:
            self.turn_started[name] = self.clock()
            self.turns += 1
        self.active[name] = self.active.get(name, 0) + count

    def _refuse_impossible(self) -> None:
        """Waiting groups whose model no longer fits even alone (a pinned model was loaded meanwhile) are
        refused, so they never hold the line for models that can run."""
        for name in [n for n in self.waiting if n not in self.active and not self.fits({n})]:
            for waiter in self.waiting.pop(name):
                if not waiter.done():
                    waiter.set_exception(_never_fits(name))

    def _dispatch(self) -> None:
        """Start waiting groups, in the order they formed, while they fit alongside what runs."""
        self._refuse_impossible()
        while self.waiting:
            name = next(iter(self.waiting))
            if name in self.active:
                if len(self.waiting) > 1:
                    return  # its hold ran out while others wait: it drains first
            elif not self.fits(self.running() | {name}):
                return  # the first group waits for the running set to drain
            group = self.waiting.pop(name)
            live = [waiter for waiter in group if not waiter.done()]
            if not live:
                continue
            self._admit(name, len(live))
            for waiter in live:
                waiter.set_result(None)


def _never_fits(name: str) -> GatewayError:
    return GatewayError(503, f"Model '{name}' does not fit the RAM budget even alone beside the pinned models that "
                             "stay loaded.", code="insufficient_ram", param="model")
