"""The end of a batch: its output and error files written as its results are read — never whole in memory, and not
bound by the upload limit (they are the gateway's own files) — then its final status: ``completed``, ``expired``,
``cancelled``, or ``failed`` when its input went away mid-batch (what ran is still written out). The files get ids
fixed by the batch, so finishing again after a crash replaces them."""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from app.batches.files import Files, Writer
from app.batches.inputs import InputGone, input_lines, succeeded
from app.batches.lines import Line, Lines, error
from app.batches.records import BatchStatus, BatchStore

JSON = dict[str, Any]
_PAGE = 500  # lines whose results are read at once


class Finisher:
    def __init__(self, store: BatchStore, files: Files, longest_line: int) -> None:
        self.store = store
        self.files = files
        self.longest_line = longest_line

    async def finish(self, batch: JSON) -> None:
        stem = batch["id"].removeprefix("batch_")
        outputs = _Output(self.files, batch, "output", f"file-{stem}-output")
        errors = _Output(self.files, batch, "error", f"file-{stem}-errors")
        try:
            try:
                ok, failed = await self._in_order(batch, outputs, errors)
            except InputGone as exc:  # the results as they were kept; the lines that never ran are counted
                outputs.discard()
                errors.discard()
                ok, failed = await self._as_kept(batch, outputs, errors)
                if batch["status"] != BatchStatus.CANCELLING and not batch.get("x_expired"):
                    batch.setdefault("x_failure", error(exc.code, f"{exc} The batch stopped; the answers it had "
                                                        "are in its output and error files."))
            owner, expires = batch["x_owner"], batch.get("x_output_expires_after")
            batch["output_file_id"] = await outputs.keep(owner, expires)
            batch["error_file_id"] = await errors.keep(owner, expires)
        finally:
            outputs.discard()
            errors.discard()
        total = batch["request_counts"]["total"]
        batch["request_counts"] = {"total": total, "completed": ok, "failed": failed}
        now = int(time.time())
        failure = batch.pop("x_failure", None)
        if failure is not None:
            not_run = total - ok - failed
            if not_run > 0:
                failure = {**failure, "message": f"{failure['message']} {not_run} of {total} requests did not run."}
            batch.update(status=BatchStatus.FAILED, failed_at=now, errors={"object": "list", "data": [failure]})
        elif batch["status"] == BatchStatus.CANCELLING:
            batch.update(status=BatchStatus.CANCELLED, cancelled_at=now)
        elif batch.pop("x_expired", False):
            batch.update(status=BatchStatus.EXPIRED, expired_at=now)
        else:
            batch.update(status=BatchStatus.COMPLETED, completed_at=now)
        await self.store.save(batch)
        await self.store.drop_results(batch["id"])

    async def _in_order(self, batch: JSON, outputs: _Output, errors: _Output) -> tuple[int, int]:
        """Every line's result in the input's order — a line with none (cancelled, expired) an error saying why.
        InputGone: the input can no longer be read."""
        unfinished = "batch_cancelled" if batch["status"] == BatchStatus.CANCELLING else "batch_expired"
        why = "cancelled." if unfinished == "batch_cancelled" else "not done in its completion window."
        lines = Lines(batch["endpoint"], self.longest_line)
        ok = failed = 0

        async def flush(page: list[Line]) -> None:
            nonlocal ok, failed
            results = await self.store.results_of(batch["id"], [line.index for line in page])
            for line in page:
                result = results.get(line.index)
                if result is None:
                    result = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": line.custom_id,
                              "response": None, "error": {"code": unfinished,
                                                          "message": f"This request was not run: the batch was {why}"}}
                good = succeeded(result)
                ok, failed = ok + good, failed + (not good)
                await (outputs if good else errors).add(orjson.dumps(result) + b"\n")

        if batch.get("x_failure") is not None:
            raise InputGone("The input file went away.")  # stopped by its input: only what ran is written
        page: list[Line] = []
        async for text in await input_lines(self.files, batch, self.longest_line):
            found = lines.parse(text)
            if isinstance(found, Line):
                page.append(found)
                if len(page) >= _PAGE:
                    await flush(page)
                    page = []
        await flush(page)
        return ok, failed

    async def _as_kept(self, batch: JSON, outputs: _Output, errors: _Output) -> tuple[int, int]:
        ok = failed = 0
        async for record in self.store.results(batch["id"]):
            good = succeeded(orjson.loads(record.value))
            ok, failed = ok + good, failed + (not good)
            await (outputs if good else errors).add(record.value + b"\n")
        return ok, failed


class _Output:
    """One of a batch's files, written as its lines come (nothing written: no file)."""

    def __init__(self, files: Files, batch: JSON, kind: str, file_id: str) -> None:
        self.files = files
        self.batch = batch
        self.kind = kind
        self.file_id = file_id
        self.writer: Writer | None = None

    async def add(self, line: bytes) -> None:
        if self.writer is None:
            self.writer = self.files.writer()  # the gateway's own file: no upload limit
        await self.writer.add(line)

    async def keep(self, owner: str, expires_after: int | None) -> str | None:
        if self.writer is None:
            return None
        writer, self.writer = self.writer, None
        written = await writer.close()
        expires_at = int(time.time()) + expires_after if expires_after else None
        record = await self.files.keep(written, owner, f"{self.batch['id']}_{self.kind}.jsonl", "batch_output",
                                       file_id=self.file_id, expires_at=expires_at)
        return str(record["id"])

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
