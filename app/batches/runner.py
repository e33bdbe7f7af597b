"""Running batches: one at a time, oldest first, each line a request to the gateway itself (``app.proxy.inprocess``)
at the batch priority class, as the key that created the batch (its allow-lists and quotas), paced by the
interactive traffic (``app.batches.pace``). In front mode the proxy spreads the lines over the nodes.

The runner of a state directory is one process: the workers of a host take a lock file in
``GATEWAY_STATE_DIR`` and the one holding it runs the batches (another takes over if it dies). Each batch is a
small state machine kept in the state store after every step, so a gateway stopped at any point — SIGTERM or
SIGKILL — resumes where it was: ``validating`` → ``in_progress`` (each finished line's result kept; a line that
was running is run again) → ``finalizing`` (the output and error files written under ids fixed by the batch, so
writing them again replaces them) → ``completed``; or ``failed`` (the input's problems), ``cancelling`` →
``cancelled`` (what finished is kept), ``expired`` (the completion window ended; the lines not run are errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import orjson

from app.access.middleware import ANYONE, Caller
from app.batches.files import FileCorrupted, Files
from app.batches.lines import Line, error, read_lines
from app.batches.pace import Pace
from app.batches.records import ACTIVE, BatchStore
from app.gateway import Gateway
from app.openai import BY_PATH
from app.proxy.handler import Proxy
from app.proxy.inprocess import ask
from app.state import StoreDown

log = logging.getLogger("foundry_gateway.batches")
JSON = dict[str, Any]
IDLE_POLL = 1.0  # seconds between looks for new or cancelled batches (another worker may have written them)
REFRESH = 1.0  # seconds between re-reads of a running batch's record (a cancel from another worker)
_DROPPED = ("stream", "stream_options")  # a batch line's answer is whole, never a stream
_WAIT_AND_RETRY = (429, 503)  # a quota spent for now, no model ready yet: the line waits (~2 min at most)
_ATTEMPTS = 8


class Runner:
    def __init__(self, gw: Gateway, proxy: Proxy, store: BatchStore, files: Files) -> None:
        self.gw = gw
        self.files = files
        self.proxy = proxy
        self.store = store
        self.settings = gw.settings
        self.instance = instance_id(self.settings.state_dir)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock: IO[bytes] | None = None

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
        if self._lock is not None:
            self._lock.close()

    # --- the loop -------------------------------------------------------------------------------------------------

    async def _main(self) -> None:
        while not self._take_lock():
            await self._idle()  # another worker of this host runs the batches; take over if it goes
        log.info("running batches of %s", self.settings.state_dir)
        while True:
            try:
                batch = next((b for b in await self.store.every()
                              if b["status"] in ACTIVE and b["x_instance"] == self.instance), None)
                if batch is None:
                    await self._idle()
                    continue
                await self._advance(batch)
            except asyncio.CancelledError:
                raise
            except StoreDown as exc:  # an outage, not a bug: one line, and the batch tried again shortly
                log.warning("running batches: %s; trying again", exc)
                await self._idle()
            except Exception:  # a bug: logged whole, and the batch tried again shortly
                log.exception("running batches failed; trying again")
                await self._idle()

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

    async def _advance(self, batch: JSON) -> None:
        """One step of a batch's state machine, from what the store says it is."""
        if batch["status"] in ("validating", "in_progress"):
            await self._stopping(batch)
        lines = await self._lines(batch)
        if lines is None:
            return
        if batch["status"] == "validating":
            batch.update(status="in_progress", in_progress_at=int(time.time()))
            batch["request_counts"]["total"] = len(lines)
            await self.store.save(batch)
        if batch["status"] == "in_progress":
            await self._run(batch, lines)
        if batch["status"] in ("finalizing", "cancelling"):
            await self._finish(batch, lines)

    async def _lines(self, batch: JSON) -> list[Line] | None:
        """The batch's requests, or None when its input cannot run (the batch is then failed)."""
        problems: list[JSON]
        record = await self.files.get(batch["input_file_id"], None)
        if record is None:
            problems = [error("file_not_found", f"The input file {batch['input_file_id']} no longer exists.")]
        else:
            try:
                raw = await self.files.read(record)
            except (OSError, FileCorrupted) as exc:
                problems = [error("file_unreadable", f"The input file cannot be read: {exc}.")]
            else:
                lines, problems = read_lines(raw, batch["endpoint"], self.settings.batch_max_lines)
                if not problems:
                    return lines
        if batch["status"] in ("validating", "in_progress"):
            batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": problems})
        else:  # finalizing or cancelling with the input gone: what ran is still written out
            return []
        await self.store.save(batch)
        return None

    # --- in progress ----------------------------------------------------------------------------------------------

    async def _run(self, batch: JSON, lines: list[Line]) -> None:
        done = await self.store.results(batch["id"])
        pending = [line for line in lines if line.index not in done]
        caller = self._caller(batch)
        pace = Pace(self.settings.batch_max_concurrency)
        activity = self.proxy.activity
        running: dict[asyncio.Task[JSON], tuple[Line, float]] = {}
        progress = refreshed = time.monotonic()
        self._count(batch, list(done.values()))
        counts = batch["request_counts"]
        try:
            while pending or running:
                now = time.monotonic()
                if now - refreshed >= REFRESH:
                    refreshed = now
                    if await self._stopping(batch):
                        return
                if time.time() >= batch["expires_at"]:
                    batch.update(status="finalizing", finalizing_at=int(time.time()), x_expired=True)
                    await self.store.save(batch)
                    return
                allowed = pace.allowed(activity.interactive, activity.since_interactive(), now - progress)
                while pending and len(running) < allowed:
                    line = pending.pop(0)
                    started = asyncio.ensure_future(self._line(batch, line, caller))
                    running[started] = (line, activity.interactive_changed)
                waits: set[asyncio.Future[Any]] = set(running)
                waits.add(asyncio.ensure_future(activity.changed(REFRESH)))
                finished, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    if task not in running:
                        continue
                    line, since = running.pop(task)
                    result = task.result()
                    await self.store.keep_result(batch["id"], line.index, result)
                    done[line.index] = result
                    progress = time.monotonic()
                    pace.finished(quiet=activity.interactive_changed == since and activity.interactive == 0)
                    counts["completed" if _succeeded(result) else "failed"] += 1
                    await self.store.save(batch)
                for waiter in waits - set(running) - finished:
                    waiter.cancel()
            if await self._stopping(batch):  # asked before the last line finished: cancelled, with everything done
                return
            batch.update(status="finalizing", finalizing_at=int(time.time()))
            await self.store.save(batch)
        finally:
            for task in running:
                task.cancel()  # stopped (cancel, shutdown): run again by whoever resumes, if not cancelled

    async def _stopping(self, batch: JSON) -> bool:
        """Whether a cancel was asked meanwhile (perhaps through another worker): the batch is then cancelling."""
        asked = await self.store.cancel_asked(batch["id"])
        if asked is None:
            return False
        batch.update(status="cancelling", cancelling_at=int(asked))
        await self.store.save(batch)
        return True

    def _caller(self, batch: JSON) -> Caller | None:
        """Who the lines run as: the key that created the batch (its allow-lists and quotas)."""
        owner = batch["x_owner"]
        if not owner:
            return ANYONE
        key = self.gw.access.key_named(owner)
        return Caller(key=key) if key is not None else None

    async def _line(self, batch: JSON, line: Line, caller: Caller | None) -> JSON:
        request_id = f"{batch['id']}-{line.index}"
        result: JSON = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": line.custom_id, "response": None,
                        "error": None}
        if caller is None:
            result["error"] = {"code": "invalid_api_key", "message": f"The key that created this batch "
                               f"('{batch['x_owner']}') is no longer in the keys file."}
            return result
        body = {k: v for k, v in line.body.items() if k not in _DROPPED}
        headers = [(b"x-priority", b"batch"), (b"x-request-id", request_id.encode())]
        task = line.task or (batch.get("metadata") or {}).get("task")
        if task:
            headers.append((self.settings.task_header.lower().encode(), task.encode("latin-1", "replace")))
        delay = 1.0
        for attempt in itertools.count(1):
            try:
                answer = await ask(self.proxy, BY_PATH[batch["endpoint"]], orjson.dumps(body), headers, caller)
            except Exception as exc:  # the proxy answers every failure itself: a bug, kept as the line's error
                log.exception("batch %s line %d failed", batch["id"], line.index)
                result["error"] = {"code": "internal_error",
                                   "message": f"Internal gateway error: {exc.__class__.__name__}"}
                return result
            if answer.status not in _WAIT_AND_RETRY or attempt >= _ATTEMPTS or \
                    time.time() + delay >= batch["expires_at"]:
                break
            # the key's quota is spent for now, or no model can answer yet: the line waits, it does not fail
            await asyncio.sleep(_retry_after(answer.headers) or delay)
            delay = min(delay * 2, 30.0)
        try:
            parsed: Any = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            parsed = {"error": {"message": answer.body.decode("utf-8", "replace")[:500], "type": "api_error"}}
        result["response"] = {"status_code": answer.status, "request_id": request_id, "body": parsed}
        return result

    @staticmethod
    def _count(batch: JSON, results: list[JSON]) -> None:
        ok = sum(1 for r in results if _succeeded(r))
        batch["request_counts"] = {"total": batch["request_counts"]["total"], "completed": ok,
                                   "failed": len(results) - ok}

    # --- the end --------------------------------------------------------------------------------------------------

    async def _finish(self, batch: JSON, lines: list[Line]) -> None:
        """Write the output and error files and close the batch (``completed``, ``expired`` or ``cancelled``)."""
        results = await self.store.results(batch["id"])
        unfinished = "batch_cancelled" if batch["status"] == "cancelling" else "batch_expired"
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for line in lines:
            result = results.get(line.index)
            if result is None:
                if batch["status"] == "finalizing" and not batch.get("x_expired"):
                    continue  # cannot happen: a finished run has every line
                result = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": line.custom_id, "response": None,
                          "error": {"code": unfinished, "message": "This request was not run: the batch was "
                                    + ("cancelled." if unfinished == "batch_cancelled" else "not done in its "
                                       "completion window.")}}
                results[line.index] = result
            (outputs if _succeeded(result) else errors).append(orjson.dumps(result) + b"\n")
        stem = batch["id"].removeprefix("batch_")
        owner = batch["x_owner"]
        if outputs:
            batch["output_file_id"] = (await self.files.create(
                owner, f"{batch['id']}_output.jsonl", "batch_output", _chunks(outputs), f"file-{stem}-output"))["id"]
        if errors:
            batch["error_file_id"] = (await self.files.create(
                owner, f"{batch['id']}_error.jsonl", "batch_output", _chunks(errors), f"file-{stem}-errors"))["id"]
        self._count(batch, list(results.values()))
        now = int(time.time())
        if batch["status"] == "cancelling":
            batch.update(status="cancelled", cancelled_at=now)
        elif batch.pop("x_expired", False):
            batch.update(status="expired", expired_at=now)
        else:
            batch.update(status="completed", completed_at=now)
        await self.store.save(batch)
        await self.store.drop_results(batch["id"], list(results))


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                return min(max(float(value), 0.1), 60.0)
            except ValueError:
                return None
    return None


def _succeeded(result: JSON) -> bool:
    response = result.get("response")
    return result.get("error") is None and isinstance(response, dict) and 200 <= response["status_code"] < 300


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    buffer: list[bytes] = []
    size = 0
    for part in parts:
        buffer.append(part)
        size += len(part)
        if size >= 1 << 20:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


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
