"""``/v1/files``: upload (multipart: ``file``, ``purpose`` ``batch``, optionally ``expires_after``; at most
``GATEWAY_MAX_FILE_BYTES``, written as it arrives), list, retrieve, ``/content`` (streamed from disk, checked
against its checksum) and delete — OpenAI's shapes, per key (``app.batches.files``)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse

from app.batches.files import FileCorrupted, public
from app.core.errors import GatewayError, bad_request
from app.gateway.conversations import owner_of
from app.server.batches import batches
from app.server.context import caller, listing
from app.server.multipart import Upload

router = APIRouter()
_FILE_ID = Path(..., max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
EXPIRES_AFTER = (3600, 30 * 86400)  # OpenAI's bounds on expires_after[seconds]


@router.post("/v1/files", summary="Upload a file (multipart: file, purpose=batch, expires_after)")
async def upload(request: Request) -> dict[str, Any]:
    files = batches(request).files
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise bad_request("Upload the file as multipart/form-data with the fields 'file' and 'purpose'.",
                          param="file")
    form = Upload(content_type, request.stream(), before_file=_check_purpose)
    written = await files.write(form.file(), files.max_bytes)
    try:
        _check_purpose(form.fields, sent=True)
        purpose = form.fields["purpose"]
        if form.filename is None:
            raise bad_request("'file' is required: the file's content as a multipart file field.", param="file",
                              code="missing_required_parameter")
        if written.size == 0:
            raise bad_request("The file is empty.", param="file", code="empty_file")
        expires_at = _expires_at(form.fields)
    except BaseException:
        files.discard(written)
        raise
    record = await files.keep(written, owner_of(caller(request)), form.filename or "upload.jsonl", purpose,
                              expires_at=expires_at)
    return public(record)


@router.get("/v1/files", summary="This key's files, newest first")
async def list_files(request: Request, purpose: str | None = Query(None, max_length=64),
                     limit: int = Query(10000, ge=1, le=10000), after: str | None = Query(None, max_length=200),
                     order: str = Query("desc", pattern="^(asc|desc)$")) -> dict[str, Any]:
    return listing(*await batches(request).files.list(caller(request), purpose, after, limit, order))


@router.get("/v1/files/{file_id}", summary="A file's record")
async def get_file(request: Request, file_id: str = _FILE_ID) -> dict[str, Any]:
    return public(await _record(request, file_id))


@router.get("/v1/files/{file_id}/content", summary="A file's content")
async def file_content(request: Request, file_id: str = _FILE_ID) -> StreamingResponse:
    record = await _record(request, file_id)
    files = batches(request).files
    try:
        await files.verify(record)  # a file that no longer matches is a clear error before any byte goes
    except (OSError, FileCorrupted) as exc:
        raise GatewayError(500, f"File {file_id} cannot be read: {exc}", code="file_unreadable") from None
    return StreamingResponse(files.content(record), media_type="application/octet-stream",
                             headers={"content-length": str(record["bytes"])})


@router.delete("/v1/files/{file_id}", summary="Delete a file")
async def delete_file(request: Request, file_id: str = _FILE_ID) -> dict[str, Any]:
    if not await batches(request).files.delete(file_id, caller(request)):
        raise _not_found(file_id)
    return {"id": file_id, "object": "file", "deleted": True}


def _check_purpose(fields: dict[str, str], sent: bool = False) -> None:
    """``purpose`` must be ``batch``: checked as soon as it came (before the file, as the SDKs send it)."""
    if (sent or "purpose" in fields) and fields.get("purpose") != "batch":
        raise bad_request("'purpose' must be 'batch' (the files this gateway keeps are batch inputs).",
                          param="purpose", code="invalid_value")


def _expires_at(fields: dict[str, str]) -> int | None:
    """OpenAI's ``expires_after`` (``anchor`` ``created_at``, ``seconds``) as an expiry time, or None."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("'expires_after[anchor]' must be 'created_at'.", param="expires_after", code="invalid_value")
    low, high = EXPIRES_AFTER
    if seconds is None or not seconds.isdigit() or not low <= int(seconds) <= high:
        raise bad_request(f"'expires_after[seconds]' must be a whole number of seconds from {low} to {high}.",
                          param="expires_after", code="invalid_value")
    return int(time.time()) + int(seconds)


async def _record(request: Request, file_id: str) -> dict[str, Any]:
    found = await batches(request).files.get(file_id, caller(request))
    if found is None:
        raise _not_found(file_id)
    return found


def _not_found(file_id: str) -> GatewayError:
    return GatewayError(404, f"No file found with id '{file_id}'.", code="not_found", param="file_id")
