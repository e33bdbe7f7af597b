"""``/v1/batches``: create, retrieve, list (newest first, ``after``/``limit``) and cancel — OpenAI's shapes, per
key (``app.batches``)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Path, Query, Request

from app.batches import Batches
from app.core.errors import bad_request
from app.server.context import caller, listing

router = APIRouter()
_BATCH_ID = Path(..., max_length=200, pattern=r"^[A-Za-z0-9_-]+$")


def batches(request: Request) -> Batches:
    found: Batches = request.app.state.batches
    return found


@router.post("/v1/batches", summary="Run a file of requests as a batch, in the capacity interactive traffic leaves")
async def create_batch(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise bad_request("The body must be JSON: {input_file_id, endpoint, completion_window, metadata}.") \
            from None
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    return await batches(request).create(caller(request), body)


@router.get("/v1/batches", summary="This key's batches, newest first")
async def list_batches(request: Request, after: str | None = Query(None, max_length=200),
                       limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    return listing(*await batches(request).page(caller(request), after, limit))


@router.get("/v1/batches/{batch_id}", summary="A batch, with its progress")
async def get_batch(request: Request, batch_id: str = _BATCH_ID) -> dict[str, Any]:
    return await batches(request).get(caller(request), batch_id)


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch (what finished is kept)")
async def cancel_batch(request: Request, batch_id: str = _BATCH_ID) -> dict[str, Any]:
    return await batches(request).cancel(caller(request), batch_id)
