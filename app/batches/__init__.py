"""The OpenAI Batch API for local models (``/v1/batches``): a file of requests (``/v1/files``) run by the gateway
in the capacity interactive traffic leaves, surviving restarts. ``Batches`` is what the routes and the console
ask; ``app.batches.runner`` runs them; ``app.batches.lines`` checks an input file; ``app.batches.records`` keeps
them in the state store."""

from __future__ import annotations

import re
import secrets
from typing import Any

from app.access.middleware import Caller
from app.batches.files import Files
from app.batches.lines import BATCHABLE
from app.batches.records import ACTIVE, DONE, BatchStatus, BatchStore, new_batch
from app.batches.runner import Runner
from app.core.errors import GatewayError, bad_request, insufficient_storage
from app.gateway import Gateway
from app.gateway.conversations import owner_of
from app.proxy.handler import Proxy
from app.state import StoreDown

JSON = dict[str, Any]
_WINDOW = re.compile(r"^([1-9][0-9]{0,3})h$")
MAX_WINDOW_HOURS = 720


class Batches:
    def __init__(self, gw: Gateway, proxy: Proxy) -> None:
        self.gw = gw
        hours = MAX_WINDOW_HOURS * 3600.0
        settings = gw.settings
        self.store = BatchStore(gw.state, results_ttl=hours + 7 * 86400, done_ttl=settings.batches_ttl)
        self.files = Files(gw.state, settings.state_dir, max_bytes=settings.max_file_bytes, ttl=settings.files_ttl,
                           disk=gw.disk)  # inputs and outputs (/v1/files)
        self.disk = gw.disk
        self.runner = Runner(gw, proxy, self.store, self.files)

    async def create(self, caller: Caller, body: JSON) -> JSON:
        input_file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        window, metadata = body.get("completion_window", "24h"), body.get("metadata")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise bad_request("'input_file_id' is required.", param="input_file_id",
                              code="missing_required_parameter")
        if endpoint not in BATCHABLE:
            raise bad_request(f"'endpoint' must be one of {', '.join(BATCHABLE)}.", param="endpoint",
                              code="invalid_value")
        found = _WINDOW.fullmatch(window) if isinstance(window, str) else None
        if found is None or int(found.group(1)) > MAX_WINDOW_HOURS:
            raise bad_request(f"'completion_window' must be a number of hours up to {MAX_WINDOW_HOURS}, such as "
                              "'24h'.", param="completion_window", code="invalid_value")
        if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items())):
            raise bad_request("'metadata' must be at most 16 string pairs (keys up to 64 characters, values up to "
                              "512).", param="metadata", code="invalid_value")
        expires_after = _expires_after(body.get("output_expires_after"))
        if self.disk.full:
            raise insufficient_storage("a new batch (its results and output files)")
        record = await self.files.get(input_file_id, caller)
        if record is None:
            raise GatewayError(404, f"No file found with id '{input_file_id}'.", code="not_found",
                               param="input_file_id")
        if record["purpose"] != "batch":
            raise bad_request(f"File {input_file_id} has purpose '{record['purpose']}'; a batch's input needs "
                              "purpose 'batch'.", param="input_file_id", code="invalid_value")
        batch = new_batch(f"batch_{secrets.token_hex(12)}", owner_of(caller), input_file_id, endpoint, window,
                          int(found.group(1)) * 3600.0, metadata, self.runner.instance, expires_after)
        await self.store.create(batch)
        self.runner.wake()
        return self.store.shown(batch, None)

    async def get(self, caller: Caller, batch_id: str) -> JSON:
        record = await self._record(caller, batch_id)
        return self.store.shown(record, await self.store.cancel_asked(batch_id)
                                if record["status"] in ACTIVE else None)

    async def page(self, caller: Caller, after: str | None, limit: int) -> tuple[list[JSON], bool]:
        return await self.store.page(caller, after, limit)

    async def recent(self, caller: Caller, limit: int = 10) -> list[JSON] | None:
        """The caller's latest batches for the console (None: the state store cannot say now)."""
        try:
            return (await self.store.page(caller, None, limit))[0]
        except StoreDown:
            return None

    async def cancel(self, caller: Caller, batch_id: str) -> JSON:
        record = await self._record(caller, batch_id)
        if record["status"] in DONE or record["status"] == BatchStatus.FINALIZING:
            raise GatewayError(409, f"Batch {batch_id} is {record['status']}: it cannot be cancelled.",
                               code="batch_not_cancellable", param="batch_id")
        asked = await self.store.ask_cancel(batch_id, record["x_owner"])
        self.runner.wake()
        return self.store.shown(record, asked)

    async def _record(self, caller: Caller, batch_id: str) -> JSON:
        record = await self.store.get(batch_id, caller)
        if record is None:
            raise GatewayError(404, f"No batch found with id '{batch_id}'.", code="not_found", param="batch_id")
        return record


def _expires_after(value: Any) -> int | None:
    """OpenAI's ``output_expires_after`` (``anchor`` ``created_at``, ``seconds`` 3600 to 30 days) for the output and
    error files, or None (``GATEWAY_FILES_TTL``)."""
    if value is None:
        return None
    if not (isinstance(value, dict) and value.get("anchor") == "created_at" and isinstance(value.get("seconds"), int)
            and not isinstance(value.get("seconds"), bool) and 3600 <= value["seconds"] <= 30 * 86400):
        raise bad_request("'output_expires_after' must be {\"anchor\": \"created_at\", \"seconds\": 3600 to 2592000}.",
                          param="output_expires_after", code="invalid_value")
    return int(value["seconds"])
