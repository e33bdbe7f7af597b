"""The OpenAI surface the gateway serves: one :class:`~app.openai.endpoint.Endpoint` per proxied route.

This table feeds the ASGI routes, the OpenAPI document, the upstream's URLs, ``/v1/route``'s ``endpoint`` values
and the CLI's ``--endpoint``: a new endpoint is one module here and one line below.
"""

from __future__ import annotations

from app.openai.chat import Chat
from app.openai.completions import Completions
from app.openai.embeddings import Embeddings
from app.openai.endpoint import Endpoint, Target
from app.openai.responses import Responses
from app.openai.transcriptions import Transcriptions

ENDPOINTS: tuple[Endpoint, ...] = (Chat(), Completions(), Responses(), Embeddings(), Transcriptions())
BY_PATH = {endpoint.path: endpoint for endpoint in ENDPOINTS}
BY_NAME = {endpoint.name: endpoint for endpoint in ENDPOINTS}

__all__ = ["BY_NAME", "BY_PATH", "ENDPOINTS", "Endpoint", "Target"]
