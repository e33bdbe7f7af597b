"""Keys for teams: the keys file, allow-lists, and quotas held by two gateway replicas together through a real
redis-server the tests start (Debian's package, installed by `make redis`)."""

from __future__ import annotations

import json

import pytest

from app.access.keys import KeysError, digest, parse_keys

# --- the keys file ---------------------------------------------------------------------------------------


def test_keys_file_errors_are_precise() -> None:
    with pytest.raises(KeysError) as caught:
        parse_keys(json.dumps({"keys": [
            {"name": "a", "key": "secret-key-1", "key_sha256": "0" * 64},
            {"name": "b", "key": "short", "requests_per_minute": -1, "priority": "urgent", "colour": "red"},
            {"name": "a", "key_sha256": "x"},
        ]}))
    problems = "\n".join(caught.value.problems)
    for expected in ("key 1 ('a'): give exactly one of 'key' and 'key_sha256'", "'key' must be a string of at least 8",
                     "'requests_per_minute' must be an integer ≥ 0", "'priority' must be 'interactive' or 'batch'",
                     "'colour' is not a known field", "'key_sha256' must be 64 hexadecimal characters"):
        assert expected in problems


def test_yaml_and_lookup_by_hash() -> None:
    ring = parse_keys(f"keys:\n  - name: team\n    key_sha256: {digest('the-team-key')}\n    models: [m]\n", yaml=True)
    found = ring.find("the-team-key")
    assert found is not None and found.name == "team" and found.models == frozenset({"m"})
    assert ring.find("the-team-kez") is None and ring.find("") is None


def test_a_yaml_error_never_quotes_the_file() -> None:
    with pytest.raises(KeysError) as caught:
        parse_keys('keys:\n  - name: a\n    key: "sk-SECRET-value\n', yaml=True)
    assert "SECRET" not in str(caught.value) and "line" in str(caught.value)


def test_concurrency_slots_are_the_gateways_not_the_clients_request_ids() -> None:
    from app.proxy.outcome import next_slot

    assert next_slot() != next_slot()  # a Call's slot: never the X-Request-Id a client may repeat


def test_quotas_are_the_keys_file_fields_and_the_stores_reasons() -> None:
    from app.access.keys import LIMITS, Quota
    from app.state.base import REASONS

    assert [q.value for q in Quota] == ["requests_per_minute", "tokens_per_minute", "tokens_per_day",
                                        "max_concurrency"]
    assert tuple(Quota) == LIMITS and {Quota(r) for r in REASONS.values()} == set(Quota)
    key = parse_keys(json.dumps({"keys": [{"name": "t", "key": "k" * 8, "tokens_per_day": 5}]})).keys[0]
    shown = key.describe()
    assert shown["tokens_per_day"] == 5 and all(type(field) is str for field in shown)  # orjson takes only str keys
