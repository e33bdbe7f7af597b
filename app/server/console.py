"""The operator console: ``/ui`` (one page, no build step, no CDN) and ``/v1/console``, the JSON it and
``foundry-gateway status`` show."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.server.batches import batches
from app.server.context import caller, gateway
from app.server.usage import console_usage
from app.server.views import console_state

router = APIRouter()
_PAGE = Path(__file__).parent / "static" / "console.html"


@router.get("/v1/console", summary="Everything the console (/ui) and `foundry-gateway status` show")
async def console(request: Request) -> dict[str, Any]:
    state = console_state(gateway(request), caller(request))
    who = caller(request)
    state["batches"] = await batches(request).recent(who)
    team = who.key.name if who.key is not None and not who.admin else None
    state["usage"] = await console_usage(gateway(request).usage, team, time.time())
    return state


@router.get("/ui", include_in_schema=False)
async def page() -> Response:
    return Response(_PAGE.read_bytes(), media_type="text/html; charset=utf-8", headers={"cache-control": "no-cache"})
