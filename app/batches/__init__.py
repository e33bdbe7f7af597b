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
from app.batches.lines import ENDPOINTS
from app.batches.records import ACTIVE, DONE, BatchStore, new_batch
from app.batches.runner import Runner
from app.core.errors import GatewayError, bad_request
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
        self.store = BatchStore(gw.state, results_ttl=hours + 7 * 86400)
        self.files = Files(gw.state, gw.settings)  # inputs and outputs (/v1/files)
        self.runner = Runner(gw, proxy, self.store, self.files)

    async def create(self, caller: Caller, body: JSON) -> JSON:
        input_file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        window, metadata = body.get("completion_window", "24h"), body.get("metadata")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise bad_request("'input_file_id' is required.", param="input_file_id",
                              code="missing_required_parameter")
        if endpoint not in ENDPOINTS:
            raise bad_request(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.", param="endpoint",
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
        record = await self.files.get(input_file_id, caller)
        if record is None:
            raise GatewayError(404, f"No file found with id '{input_file_id}'.", code="not_found",
                               param="input_file_id")
        if record["purpose"] != "batch":
            raise bad_request(f"File {input_file_id} has purpose '{record['purpose']}'; a batch's input needs "
                              "purpose 'batch'.", param="input_file_id", code="invalid_value")
        batch = new_batch(f"batch_{secrets.token_hex(12)}", owner_of(caller), input_file_id, endpoint, window,
                          int(found.group(1)) * 3600.0, metadata, self.runner.instance)
        await self.store.save(batch)
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
        if record["status"] in DONE or record["status"] == "finalizing":
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
