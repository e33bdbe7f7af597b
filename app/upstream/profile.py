"""What kind of server the upstream is, as a type: Foundry Local or a plain OpenAI-compatible server.

Each profile owns what differs between them — the URL layout, the quirks the proxy works around and how a
refusal is read — so nothing else in the gateway compares a kind name or sniffs an error message:

  =====================  =================================  ==================================
                         :class:`FoundryLocal`              :class:`OpenAICompatible`
  =====================  =================================  ==================================
  URLs                   ``/catalogs/local/v1/…``, manages  ``/v1/…``
                         models (``models/load/{alias}``)
  ``n > 1``              ignored silently: refused first    served
  ``max_tokens``         needs one: the gateway adds it     the server's default
  ``/v1/completions``    translated to chat                 served
  "Model … not loaded"   load it and send again (400)       —
  =====================  =================================  ==================================
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class Refusal(StrEnum):
    """What an upstream's error answer means for the attempt."""

    NOT_LOADED = "not_loaded"  # the runtime unloaded the model behind the gateway's back: load, send again
    MISSING = "missing"  # the upstream has no such model: the next one may
    CLIENT = "client"  # the request's own fault: the client hears it as it is
    BUSY = "busy"  # 429: another model (or node) may take it
    FAILED = "failed"  # the upstream failed (5xx): another model (or node) may take it


class Profile:
    """An OpenAI-compatible upstream; subclasses override what their server does differently."""

    name: ClassVar[str] = "openai"
    system: ClassVar[str] = "openai"  # ``gen_ai.system`` of the traces
    manages_models: ClassVar[bool] = False  # lists what is loaded, loads and unloads on request
    has_completions: ClassVar[bool] = True  # serves /v1/completions itself
    single_choice: ClassVar[bool] = False  # ignores ``n > 1`` (so the gateway refuses it first)
    needs_max_tokens: ClassVar[bool] = False  # cuts answers short without one (so the gateway adds it)

    def prefix(self, catalog_prefix: str) -> str:
        """The path every route of this upstream starts with."""
        return ""

    def urls(self, base: str, prefix: str) -> dict[str, str]:
        api = f"{base}{prefix}/v1"
        return {
            "chat": f"{api}/chat/completions",
            "completions": f"{api}/completions",
            "responses": f"{api}/responses",
            "embeddings": f"{api}/embeddings",
            "transcriptions": f"{api}/audio/transcriptions",
            "models": f"{api}/models",
            "loaded": f"{base}{prefix}/models/loaded",
            "load": f"{base}{prefix}/models/load/",
            "unload": f"{base}{prefix}/models/unload/",
            "status": f"{base}/status",
        }

    def reads_our_files(self, loopback: bool) -> bool:
        """Does its transcription endpoint take a path it reads from this host's disk?"""
        return False

    def refusal(self, status: int, message: str) -> Refusal:
        """What an error answer (``status``, the upstream's message) means."""
        if status == 404 and "model" in message.lower():
            return Refusal.MISSING
        if status == 429:
            return Refusal.BUSY
        if status >= 500:
            return Refusal.FAILED
        return Refusal.CLIENT

    def stream_error_status(self, error: dict[str, Any]) -> int:
        """The status of an error event that opened a stream answered with HTTP 200: 400 when it is the request's
        fault, else 502 (the upstream's)."""
        kind = str(error.get("type", ""))
        message = str(error.get("message", "")).lower()
        # a node (itself a gateway) passes its runtime's "not loaded" on: the upstream's fault, not the request's
        client = kind == "invalid_request_error" and "not found" not in message and "not loaded" not in message
        return 400 if client else 502


class OpenAICompatible(Profile):
    """vLLM, llama.cpp's server, Ollama, another gateway: the OpenAI API under ``/v1`` and nothing more."""


class FoundryLocal(Profile):
    """Microsoft Foundry Local: the local catalog under a prefix, models loaded on request, and its quirks."""

    name = "foundry"
    system = "foundry_local"
    manages_models = True
    has_completions = False
    single_choice = True
    needs_max_tokens = True

    def prefix(self, catalog_prefix: str) -> str:
        return catalog_prefix.rstrip("/")

    def reads_our_files(self, loopback: bool) -> bool:
        return loopback

    def refusal(self, status: int, message: str) -> Refusal:
        if status == 400 and "not loaded" in message.lower():
            return Refusal.NOT_LOADED
        return super().refusal(status, message)


PROFILES: dict[str, Profile] = {profile.name: profile for profile in (FoundryLocal(), OpenAICompatible())}
