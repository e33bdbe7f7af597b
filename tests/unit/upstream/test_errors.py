"""What an upstream says of a refusal, as the client may read it: internals out, the rest as it was."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.upstream.errors import clean, refusal

FOUNDRY = ("Invalid request: search_options.cc:108 int fl::ValidateGeneratorRequestBudget(int64_t, int, int) request "
           "requires 100011 total tokens (11 input + 100000 output), which exceeds the model's maximum context length "
           "of 2048 tokens")


def test_source_locations_signatures_urls_and_paths_go() -> None:
    assert clean(FOUNDRY) == ("Invalid request: request requires 100011 total tokens (11 input + 100000 output), "
                              "which exceeds the model's maximum context length of 2048 tokens")
    assert clean("Model not found: m at http://127.0.0.1:5273/catalogs/local/v1 in /root/.foundry/x/model.onnx") == \
        "Model not found: m at <upstream> in <path>"
    assert clean(r"Failed at C:\Users\me\cache\model.onnx (line 3)") == "Failed at <path> (line 3)"
    assert clean("a ratio 3/4, a/b and 'quoted' text stay") == "a ratio 3/4, a/b and 'quoted' text stay"


def test_a_refusal_keeps_its_status_type_and_code() -> None:
    error = refusal(400, b'{"error": {"message": "' + FOUNDRY.encode() + b'", "type": "invalid_request_error"}}', "m")
    assert error.status == 400 and error.type == "invalid_request_error" and "search_options" not in error.message
    assert refusal(500, b"plain text failure", "m").status == 502
    assert refusal(503, b"", "m").message == "upstream error: upstream answered HTTP 503"


@given(st.text(max_size=200))
def test_cleaning_never_grows_a_message_much_and_is_stable(text: str) -> None:
    once = clean(text)
    assert clean(once) == once
    assert len(once) <= len(text) + 10 * text.count("/") + 10
