"""``app.upstream.profile`` on its own: what each kind of upstream's refusals mean, and its quirks."""

from __future__ import annotations

import pytest

from app.upstream.profile import PROFILES, FoundryLocal, OpenAICompatible, Refusal


@pytest.mark.parametrize(("status", "message", "foundry", "openai"), [
    (400, "Model Phi-4-mini is not loaded", Refusal.NOT_LOADED, Refusal.CLIENT),
    (400, "max_tokens must be set", Refusal.CLIENT, Refusal.CLIENT),
    (404, "The model 'x' does not exist", Refusal.MISSING, Refusal.MISSING),
    (404, "no such route", Refusal.CLIENT, Refusal.CLIENT),
    (429, "busy", Refusal.BUSY, Refusal.BUSY),
    (500, "boom", Refusal.FAILED, Refusal.FAILED),
    (503, "loading", Refusal.FAILED, Refusal.FAILED),
])
def test_a_refusal_reads_by_the_upstreams_kind(status: int, message: str, foundry: Refusal, openai: Refusal) -> None:
    assert FoundryLocal().refusal(status, message) is foundry
    assert OpenAICompatible().refusal(status, message) is openai


@pytest.mark.parametrize("profile", [FoundryLocal(), OpenAICompatible()], ids=["foundry", "openai"])
def test_an_error_event_that_opens_a_stream_is_the_requests_fault_only_when_it_says_so(profile: object) -> None:
    status = profile.stream_error_status  # type: ignore[attr-defined]
    assert status({"type": "invalid_request_error", "message": "temperature must be ≤ 2"}) == 400
    assert status({"type": "server_error", "message": "oom"}) == 502
    assert status({"type": "invalid_request_error", "message": "model not found"}) == 502
    # a node (a gateway, so an OpenAI-compatible upstream) passes its runtime's "not loaded" on: not the request's
    assert status({"type": "invalid_request_error", "message": "Model x is not loaded"}) == 502


def test_the_quirks_are_the_profiles() -> None:
    foundry, openai = PROFILES["foundry"], PROFILES["openai"]
    assert foundry.manages_models and foundry.single_choice and foundry.needs_max_tokens and not foundry.has_completions
    assert not (openai.manages_models or openai.single_choice or openai.needs_max_tokens) and openai.has_completions
    assert foundry.prefix("/catalogs/local/") == "/catalogs/local" and openai.prefix("/catalogs/local") == ""
    assert foundry.urls("http://h:1", "/catalogs/local")["chat"] == "http://h:1/catalogs/local/v1/chat/completions"
    assert openai.urls("http://h:1", "")["loaded"] == "http://h:1/models/loaded"
    assert foundry.reads_our_files(True) and not foundry.reads_our_files(False) and not openai.reads_our_files(True)
