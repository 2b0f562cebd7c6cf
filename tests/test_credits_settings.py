"""The credit settings: low-balance thresholds per tenant, the hold timeout's bound, and the
crossing rule that decides when an alert is published."""

from __future__ import annotations

import pytest

from config.settings import ConfigError, load_settings
from crmcache.credits_low import crossed_below


@pytest.mark.parametrize(
    ("text", "acme", "globex"),
    [
        ("", None, None),
        ("5", 5.0, 5.0),
        ("acme:10", 10.0, None),
        ("5, acme:10", 10.0, 5.0),
        ("acme:0.5,globex:0", 0.5, 0.0),
    ],
)
def test_low_balance_thresholds_are_per_tenant_with_a_default(
    text: str, acme: float | None, globex: float | None
) -> None:
    settings = load_settings(CRM_CREDITS_LOW_THRESHOLD=text)
    assert settings.low_balance_threshold("acme") == acme
    assert settings.low_balance_threshold("globex") == globex


@pytest.mark.parametrize("bad", ["x", "acme:", "acme:-1", "bad tenant!:3", "nan"])
def test_a_bad_threshold_names_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="CRM_CREDITS_LOW_THRESHOLD"):
        load_settings(CRM_CREDITS_LOW_THRESHOLD=bad)


def test_a_hold_timeout_must_be_shorter_than_the_records_it_needs() -> None:
    with pytest.raises(ConfigError, match="CRM_HOLD_TIMEOUT"):
        load_settings(CRM_HOLD_TIMEOUT=120, CRM_IDEMPOTENCY_TTL=60)


@pytest.mark.parametrize(
    ("before", "after", "crossed"),
    [(5, 4, True), (5, 5, False), (4, 3, False), (10, 0, True), (6, 5, False), (4, 6, False)],
)
def test_only_a_crossing_below_the_threshold_alerts(
    before: float, after: float, crossed: bool
) -> None:
    assert crossed_below(before, after, 5) is crossed
