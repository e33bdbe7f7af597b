"""Running batches: each line a request to the gateway itself (``app.proxy.inprocess``) at the batch priority class,
as the key that created the batch (its allow-lists and quotas), paced by the interactive traffic
(``app.batches.pace``). In front mode the proxy spreads the lines over the nodes.

The runner of a state directory is one process: the workers of a host take a lock file in
``GATEWAY_STATE_DIR`` and the one holding it runs the batches (another takes over if it dies). It reads only the
active batches (an index, not the history) and takes turns between them — a slice of ``SLICE`` seconds each while
several wait — so one tenant's long batch never holds another's. Each batch is a small state machine kept in the
state store after every step, so a gateway stopped at any point — SIGTERM or SIGKILL — resumes where it was:
``validating`` (the input checked a line at a time) → ``in_progress`` (each finished line's result kept; a line that
was running is run again) → ``finalizing`` (the output and error files written as the results are read, under ids
fixed by the batch, so writing them again replaces them) → ``completed``; or ``failed`` (the input's problems, or an
input file that went away mid-batch: what ran is still written out), ``cancelling`` → ``cancelled`` (what finished
is kept), ``expired`` (the completion window ended; the lines not run are errors). A batch that cannot be moved on
(a bug) is tried a few times and then failed with the reason — it never stops the others. Files and records are
never whole in memory: lines are read, and outputs written, a piece at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from app.access.middleware import ANYONE, Caller
from app.batches.ask import run_line
from app.batches.files import Files
from app.batches.finish import Finisher
from app.batches.inputs import InputGone, input_lines, succeeded
from app.batches.lines import Checker, Line, Lines, error
from app.batches.pace import Pace
from app.batches.records import STARTED, BatchStatus, BatchStore, index_of
from app.batches.sweeper import Sweeper
from app.core.errors import GatewayError
from app.gateway import Gateway
from app.proxy.handler import Proxy
from app.state import StoreDown

log = logging.getLogger("foundry_gateway.batches")
JSON = dict[str, Any]
IDLE_POLL = 1.0  # seconds between looks for new or cancelled batches (another worker may have written them)
REFRESH = 1.0  # seconds between re-reads of a running batch's record (a cancel from another worker)
SLICE = 10.0  # seconds a batch runs before the next waiting one takes its turn
MAX_FAILURES = 3  # unexpected errors in a row before a batch is failed with the reason


@dataclass(slots=True)
class Progress:
    """What this process knows of a running batch between its turns: the lines done and where its input is."""

    done: set[int] = field(default_factory=set)
    ok: int = 0
    source: AsyncIterator[Line] | None = None  # the input, read on from where the last turn stopped
    retry: list[Line] = field(default_factory=list)  # lines stopped mid-flight: run first at the next turn

    async def next_line(self) -> Line:
        """The next line to run (StopAsyncIteration: none left)."""
        if self.retry:
            return self.retry.pop()
        assert self.source is not None
        return await anext(self.source)


class Runner:
    def __init__(self, gw: Gateway, proxy: Proxy, store: BatchStore, files: Files) -> None:
        self.gw = gw
        self.files = files
        self.proxy = proxy
        self.store = store
        self.settings = gw.settings
        self.instance = instance_id(self.settings.state_dir)
        self.sweeper = Sweeper(gw.state, files, self.settings.sweep_interval)
        self.finisher = Finisher(store, files, self.settings.max_body_bytes)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock: IO[bytes] | None = None
        self._progress: dict[str, Progress] = {}
        self._failures: dict[str, int] = {}
        self._last = ""  # the batch that had the last turn
        self._full_said = 0.0

    def wake(self) -> None:
        """A batch was created or cancelled in this process: look now."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._main(), name="batches")

    async def stop(self) -> None:
        """Stop running lines: they are run again by the next gateway (their results were never kept)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sweeper.stop()
        for progress in self._progress.values():
            await _close(progress.source)
        if self._lock is not None:
            self._lock.close()

    # --- the loop -------------------------------------------------------------------------------------------------

    async def _main(self) -> None:
        while not self._take_lock():
            await self._idle()  # another worker of this host runs the batches; take over if it goes
        log.info("running batches of %s", self.settings.state_dir)
        self.sweeper.start()
        while True:
            try:
                await self.store.index_earlier_batches(self.instance)
                break
            except StoreDown as exc:
                log.warning("running batches: %s; trying again", exc)
                await self._idle()
        while True:
            batch: JSON | None = None
            try:
                batches = await self.store.active(self.instance)
                if not batches:
                    await self._idle()
                    continue
                batch = self._next(batches)
                await self._advance(batch, time.monotonic() + SLICE if len(batches) > 1 else None)
                self._failures.pop(batch["id"], None)
            except asyncio.CancelledError:
                raise
            except StoreDown as exc:  # an outage, not a bug: one line, and the batch tried again shortly
                log.warning("running batches: %s; trying again", exc)
                await self._idle()
            except GatewayError as err:  # no room for its output files yet: it waits, the others go on
                if err.status != 507:
                    raise
                if time.monotonic() - self._full_said > 60:
                    self._full_said = time.monotonic()
                    log.warning("batch %s waits for room on the state disk to write its files", batch and batch["id"])
                await self._idle()
            except Exception as exc:  # a bug: logged whole; after a few in a row the batch is failed, with why
                log.exception("running batch %s failed", batch["id"] if batch else "?")
                if batch is not None:
                    await self._count_failure(batch, exc)
                await self._idle()

    def _next(self, batches: list[JSON]) -> JSON:
        """The batch whose turn it is: the one after the last to have one (oldest first, round the list)."""
        ids = [b["id"] for b in batches]
        at = ids.index(self._last) + 1 if self._last in ids else 0
        batch = batches[at % len(batches)]
        self._last = batch["id"]
        return batch

    async def _count_failure(self, batch: JSON, exc: Exception) -> None:
        failures = self._failures[batch["id"]] = self._failures.get(batch["id"], 0) + 1
        if failures < MAX_FAILURES:
            return
        self._failures.pop(batch["id"], None)
        batch.update(status=BatchStatus.FAILED, failed_at=int(time.time()), errors={"object": "list", "data": [error(
            "internal_error", f"The gateway could not finish this batch ({exc.__class__.__name__}: {exc}); the "
            "results it kept are not written out.")]})
        with contextlib.suppress(StoreDown):
            await self.store.save(batch)
        await self._forget(batch["id"])

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), IDLE_POLL)

    def _take_lock(self) -> bool:
        if self._lock is not None:
            return True
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.settings.state_dir / "batches.lock", "a+b")  # noqa: SIM115 - held for the process's life
        if not _try_lock(handle):
            handle.close()
            return False
        self._lock = handle
        return True

    async def _advance(self, batch: JSON, until: float | None) -> None:
        """One turn of a batch's state machine, from what the store says it is (``until``: when to give the turn
        to the next batch)."""
        if batch["status"] in STARTED:
            await self._stopping(batch)
        if batch["status"] == BatchStatus.VALIDATING:
            await self._validate(batch)
        if batch["status"] == BatchStatus.IN_PROGRESS:
            await self._run(batch, until)
        if batch["status"] in (BatchStatus.FINALIZING, BatchStatus.CANCELLING):
            await self._finish(batch)

    # --- validating -----------------------------------------------------------------------------------------------

    async def _validate(self, batch: JSON) -> None:
        """Check the input a line at a time; problems (or no input) fail the batch before anything runs."""
        checker = Checker(batch["endpoint"], self.settings.batch_max_lines, self.settings.max_body_bytes)
        try:
            async for text in await input_lines(self.files, batch, self.settings.max_body_bytes):
                checker.add(text)
        except InputGone as exc:
            problems = [error(exc.code, str(exc))]
        else:
            problems = checker.finish()
        if problems:
            batch.update(status=BatchStatus.FAILED, failed_at=int(time.time()),
                         errors={"object": "list", "data": problems})
        else:
            batch.update(status=BatchStatus.IN_PROGRESS, in_progress_at=int(time.time()))
            batch["request_counts"]["total"] = checker.lines.count
        await self.store.save(batch)

    # --- in progress ----------------------------------------------------------------------------------------------

    async def _run(self, batch: JSON, until: float | None) -> None:
        progress = self._progress.get(batch["id"]) or await self._resume(batch)
        if progress.source is None:
            progress.source = self._pending(batch, progress)
        caller = self._caller(batch)
        task_header = self.settings.task_header
        pace = Pace(self.settings.batch_max_concurrency)
        activity = self.proxy.activity
        running: dict[asyncio.Task[JSON], tuple[Line, float]] = {}
        progress_at = refreshed = time.monotonic()
        counts = batch["request_counts"]
        exhausted = False
        try:
            while True:
                now = time.monotonic()
                if now - refreshed >= REFRESH:
                    refreshed = now
                    if await self._stopping(batch):
                        return
                    if until is None and len(await self.store.active_ids(self.instance)) > 1:
                        until = now + SLICE  # another batch came: this one gives it a turn soon
                if time.time() >= batch["expires_at"]:
                    batch.update(status=BatchStatus.FINALIZING, finalizing_at=int(time.time()), x_expired=True)
                    await self.store.save(batch)
                    return
                turn_over = until is not None and now >= until
                allowed = 0 if turn_over else pace.allowed(activity.interactive, activity.since_interactive(),
                                                           now - progress_at)
                while not exhausted and len(running) < allowed:
                    try:
                        line = await progress.next_line()
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    except InputGone as exc:  # deleted or altered mid-batch: what ran is written out
                        batch.update(status=BatchStatus.FINALIZING, finalizing_at=int(time.time()), x_failure=error(
                            "file_not_found", f"{exc} The batch stopped; the answers it had are in its output "
                            "and error files."))
                        await self.store.save(batch)
                        return
                    started = asyncio.ensure_future(run_line(self.proxy, task_header, batch, line, caller))
                    running[started] = (line, activity.interactive_changed)
                if not running:
                    if exhausted:
                        break
                    if turn_over:
                        return  # the next batch's turn; this one goes on from here at its next
                waits: set[asyncio.Future[Any]] = set(running)
                waits.add(asyncio.ensure_future(activity.changed(REFRESH)))
                finished, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    if task not in running:
                        continue
                    line, since = running.pop(task)
                    result = task.result()
                    await self.store.keep_result(batch["id"], line.index, result)
                    progress.done.add(line.index)
                    progress_at = time.monotonic()
                    pace.finished(quiet=activity.interactive_changed == since and activity.interactive == 0)
                    good = succeeded(result)
                    progress.ok += good
                    counts["completed" if good else "failed"] += 1
                    await self.store.save(batch)
                for waiter in waits - set(running) - finished:
                    waiter.cancel()
            if await self._stopping(batch):  # asked before the last line finished: cancelled, with everything done
                return
            batch.update(status=BatchStatus.FINALIZING, finalizing_at=int(time.time()))
            await self.store.save(batch)
        finally:
            for task, (line, _) in running.items():
                task.cancel()  # stopped (cancel, shutdown): run again by whoever resumes, if not cancelled
                progress.retry.append(line)

    async def _resume(self, batch: JSON) -> Progress:
        """A batch this process has not run yet (new, or kept by a gateway that stopped): its results so far."""
        progress = self._progress[batch["id"]] = Progress()
        async for record in self.store.results(batch["id"]):
            progress.done.add(index_of(record))
            progress.ok += succeeded(orjson.loads(record.value))
        batch["request_counts"].update(completed=progress.ok, failed=len(progress.done) - progress.ok)
        return progress

    async def _pending(self, batch: JSON, progress: Progress) -> AsyncIterator[Line]:
        """The input's lines that have no result yet, one at a time."""
        lines = Lines(batch["endpoint"], self.settings.max_body_bytes)
        async for text in await input_lines(self.files, batch, self.settings.max_body_bytes):
            found = lines.parse(text)
            if isinstance(found, Line) and found.index not in progress.done:
                yield found

    async def _stopping(self, batch: JSON) -> bool:
        """Whether a cancel was asked meanwhile (perhaps through another worker): the batch is then cancelling."""
        asked = await self.store.cancel_asked(batch["id"])
        if asked is None:
            return False
        batch.update(status=BatchStatus.CANCELLING, cancelling_at=int(asked))
        await self.store.save(batch)
        return True

    def _caller(self, batch: JSON) -> Caller | None:
        """Who the lines run as: the key that created the batch (its allow-lists and quotas)."""
        owner = batch["x_owner"]
        if not owner:
            return ANYONE
        key = self.gw.access.key_named(owner)
        return Caller(key=key) if key is not None else None

    # --- the end --------------------------------------------------------------------------------------------------

    async def _finish(self, batch: JSON) -> None:
        await self.finisher.finish(batch)
        await self._forget(batch["id"])

    async def _forget(self, batch_id: str) -> None:
        progress = self._progress.pop(batch_id, None)
        if progress is not None:
            await _close(progress.source)


async def _close(source: AsyncIterator[Line] | None) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def instance_id(state_dir: Path) -> str:
    """This state directory's id: batches belong to the runner of the directory holding their files."""
    path = state_dir / "instance"
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    candidate = secrets.token_hex(8)
    tmp = state_dir / f".instance.{os.getpid()}"
    tmp.write_text(candidate)
    try:
        os.link(tmp, path)  # atomic: of workers starting together, the first one's id stands
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def _try_lock(handle: IO[bytes]) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
