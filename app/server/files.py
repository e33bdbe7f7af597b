"""``/v1/files``: upload (multipart, ``purpose`` ``batch``, at most ``GATEWAY_MAX_FILE_BYTES``), list, retrieve,
``/content`` and delete — OpenAI's shapes, per key (``app.gateway.files``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.batches.files import FileCorrupted, public
from app.core.errors import GatewayError, bad_request
from app.gateway.conversations import owner_of
from app.server.batches import batches
from app.server.context import caller, listing

router = APIRouter()
_FILE_ID = Path(..., max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
_CHUNK = 1 << 20
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the purpose field, on top of the file


@router.post("/v1/files", summary="Upload a file (multipart: file, purpose=batch)")
async def upload(request: Request) -> dict[str, Any]:
    files = batches(request).files
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > files.max_bytes + _FORM_OVERHEAD:
        raise GatewayError(413, f"The file is larger than {files.max_bytes} bytes (GATEWAY_MAX_FILE_BYTES).",
                           code="file_too_large", param="file")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("Upload the file as multipart/form-data with the fields 'file' and 'purpose'.",
                          param="file")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except MultiPartException as exc:
        raise bad_request(f"The multipart body cannot be read: {exc.message}", param="file") from None
    purpose, upload = form.get("purpose"), form.get("file")
    if purpose != "batch":
        raise bad_request("'purpose' must be 'batch' (the files this gateway keeps are batch inputs).",
                          param="purpose", code="invalid_value")
    if not isinstance(upload, UploadFile):
        raise bad_request("'file' is required: the file's content as a multipart file field.", param="file",
                          code="missing_required_parameter")

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await upload.read(_CHUNK):
            yield chunk

    try:
        record = await files.create(owner_of(caller(request)), upload.filename or "upload.jsonl", "batch", chunks())
    finally:
        await form.close()
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
async def file_content(request: Request, file_id: str = _FILE_ID) -> Response:
    record = await _record(request, file_id)
    try:
        data = await batches(request).files.read(record)
    except (OSError, FileCorrupted) as exc:
        raise GatewayError(500, f"File {file_id} cannot be read: {exc}", code="file_unreadable") from None
    return Response(data, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", summary="Delete a file")
async def delete_file(request: Request, file_id: str = _FILE_ID) -> dict[str, Any]:
    if not await batches(request).files.delete(file_id, caller(request)):
        raise _not_found(file_id)
    return {"id": file_id, "object": "file", "deleted": True}


async def _record(request: Request, file_id: str) -> dict[str, Any]:
    found = await batches(request).files.get(file_id, caller(request))
    if found is None:
        raise _not_found(file_id)
    return found


def _not_found(file_id: str) -> GatewayError:
    return GatewayError(404, f"No file found with id '{file_id}'.", code="not_found", param="file_id")
