"""Consistency tokens (crmcache/tokens.py): their two forms round-trip, anything else is
refused, and a token is satisfied exactly by data at or past it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmcache.keyspace import STREAMS
from crmcache.tokens import (
    InvalidToken,
    SeqToken,
    VersionToken,
    parse_token,
    satisfies,
    version_token,
)

EPOCHS = st.from_regex(r"[0-9A-Za-z_-]{1,64}", fullmatch=True)
COUNTS = st.integers(min_value=0, max_value=2**63 - 1)


@given(EPOCHS, COUNTS)
def test_a_version_token_round_trips(epoch: str, version: int) -> None:
    assert parse_token(version_token(epoch, version)) == VersionToken(epoch, version)


@given(st.sampled_from(STREAMS), COUNTS)
def test_a_seq_token_round_trips(stream: str, seq: int) -> None:
    assert parse_token(str(SeqToken(stream, seq))) == SeqToken(stream, seq)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_as_invalid(text: str) -> None:
    try:
        token = parse_token(text)
    except InvalidToken:
        return
    assert str(token) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v1",
        "v1.",
        "v1.abc",
        "v1.abc.",
        "v1.abc.-1",
        "v1.abc.1e3",
        "v1.a b.3",
        "v2.abc.3",
        "v1.abc.99999999999999999999",
        "roles",
        "roles:",
        "roles:-1",
        "changes:5",
        "crm:acme:roles:5",
        "users:٣",
        "x" * 161,
    ],
)
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(InvalidToken):
        parse_token(text)


def test_a_tenant_without_an_epoch_has_no_version_token() -> None:
    assert version_token(None, 5) == "" and version_token(b"", 5) == ""
    assert version_token(b"e1-0", 5) == "v1.e1-0.5"


@pytest.mark.parametrize(
    ("token", "epoch", "version", "ready", "upstream", "expected"),
    [
        ("v1.e1.7", "e1", 7, True, {}, True),  # at the token
        ("v1.e1.7", b"e1", 9, True, {}, True),  # past it
        ("v1.e1.7", "e1", 6, True, {}, False),  # not yet
        ("v1.e1.7", "e1", 6, False, {}, False),
        ("v1.e1.7", "e2", 1, True, {}, True),  # Redis lost the data; ready again
        ("v1.e1.7", "e2", 99, False, {}, False),  # ... but not ready yet
        ("v1.e1.7", None, 0, False, {}, False),  # no epoch at all
        ("users:10", "e1", 0, True, {"users": 10}, True),
        ("users:10", "e1", 0, True, {"users": 9, "roles": 50}, False),
        ("roles:1", "e1", 0, True, {}, False),
    ],
)
def test_a_token_is_satisfied_by_data_at_or_past_it(
    token: str,
    epoch: str | bytes | None,
    version: int,
    ready: bool,
    upstream: dict[str, int],
    expected: bool,
) -> None:
    parsed = parse_token(token)
    assert (
        satisfies(parsed, epoch=epoch, version=version, ready=ready, upstream=upstream) is expected
    )
