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


# --- keys that expire and rotate, budgets (issue 34) ------------------------------------------------------------


def test_expires_at_as_iso_or_unix_seconds_and_an_expired_key_says_so() -> None:
    import time

    ring = parse_keys(json.dumps({"keys": [
        {"name": "old", "key": "old-secret-key", "expires_at": "2020-01-31T00:00:00Z"},
        {"name": "naive", "key": "naive-secret-key", "expires_at": "2999-01-01T00:00:00"},
        {"name": "epoch", "key": "epoch-secret-key", "expires_at": time.time() + 60},
    ]}))
    old = ring.match("old-secret-key")
    assert old is not None and old.expired() and ring.find("old-secret-key") is None
    assert "expired at 2020-01-31T00:00:00Z" in old.refusal()
    assert ring.find("naive-secret-key") is not None and ring.find("epoch-secret-key") is not None
    naive = ring.match("naive-secret-key")
    assert naive is not None and naive.until == 32472144000.0  # a time without a zone is UTC


def test_a_rotated_secret_opens_the_same_key_until_its_overlap_ends() -> None:
    import time

    ring = parse_keys(json.dumps({"keys": [{"name": "team", "key_sha256": digest("new-secret-key"), "previous": [
        {"key_sha256": digest("mid-secret-key"), "expires_at": time.time() + 3600},
        {"key_sha256": digest("old-secret-key"), "expires_at": time.time() - 1}]}]}))
    assert ring.find("new-secret-key") is ring.find("mid-secret-key") is not None
    old = ring.match("old-secret-key")
    assert old is not None and old.rotated and old.expired() and "replaced by a rotation" in old.refusal()
    assert old.key.name == "team"  # usage stays with the name


def test_budgets_and_expiry_fields_are_checked() -> None:
    with pytest.raises(KeysError) as caught:
        parse_keys(json.dumps({"keys": [{"name": "a", "key": "secret-key-1", "max_cost_per_day": -1,
                                         "max_tokens_per_month": 1.5, "expires_at": "tomorrow",
                                         "previous": [{"key_sha256": "x"}]}]}))
    problems = "\n".join(caught.value.problems)
    for expected in ("'max_cost_per_day' must be a number ≥ 0", "'max_tokens_per_month' must be an integer ≥ 0",
                     "'expires_at' must be an ISO 8601 time", "previous 1 needs 'key_sha256'"):
        assert expected in problems
    ring = parse_keys(json.dumps({"keys": [{"name": "a", "key": "secret-key-1", "max_cost_per_day": 2.5,
                                            "max_tokens_per_month": 1000}]}))
    key = ring.find("secret-key-1")
    assert key is not None and key.budgeted and key.max_cost_per_day == 2.5 and key.max_tokens_per_month == 1000
    assert key.describe()["max_cost_per_day"] == 2.5


def test_a_replaced_secret_may_not_be_another_keys_secret() -> None:
    with pytest.raises(KeysError, match="the same key appears under two names"):
        parse_keys(json.dumps({"keys": [
            {"name": "a", "key": "secret-key-1"},
            {"name": "b", "key": "secret-key-2", "previous": [{"key_sha256": digest("secret-key-1"),
                                                                "expires_at": "2999-01-01T00:00:00Z"}]}]}))
