"""Property-based run of schemathesis against the OpenAPI document of a live server: whatever
it generates for each operation (with acme's key), no answer is a 5xx and every answer matches
the documented schema, status codes and content types."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from crmcache.keyspace import TenantKeys
from tests.api_support import ACME

pytest_plugins = ("tests.api_fixtures",)

EXAMPLES_PER_OPERATION = 40


def accepted_but_for_two_levels(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's positive-data check, but for the one rule OpenAPI cannot state: the
    ``consistency`` and ``token`` parameters each valid, together contradictory (a token with
    another level, two different tokens, at_least_as_fresh with none): a documented 400."""
    query = case.query or {}
    level = str(query.get("consistency", ""))
    contradictory = ("token" in query and level not in ("", "at_least_as_fresh")) or (
        level == "at_least_as_fresh" and "token" not in query
    )
    if (
        response.status_code == 400
        and response.json().get("error") == "invalid_consistency"
        and (contradictory or ("token" in query and ":" in level))
    ):
        return None
    return positive_data_acceptance(ctx, response, case)


def test_no_5xx_and_every_answer_matches_the_schema(serve: Any, preload: Any, r: Any) -> None:
    # Given a live server with both tenants ready and plenty of credits to spend
    preload()
    r.set(TenantKeys.of("acme").balance("user-456"), "1000000")
    with serve() as client:
        schema = schemathesis.openapi.from_url(f"{client.base_url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 8
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                # When a generated request is sent, then the answer is documented, not a 5xx
                case.call_and_validate(
                    headers=ACME,
                    excluded_checks=[positive_data_acceptance],
                    additional_checks=[accepted_but_for_two_levels],
                )

            check()


def test_patterns_mean_the_same_to_the_schema_and_to_the_api(serve: Any) -> None:
    # Given the OpenAPI document's patterns (JSON Schema reads them as ECMA-262 regexes)
    with serve() as client:
        document = client.get("/openapi.json").json()
    patterns: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.append(node["pattern"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert patterns
    # Then none uses a class whose members differ between Python's re and ECMA-262
    # (\s, \w, \d, \b are Unicode-aware in Python, narrower or otherwise in ECMA-262)
    for pattern in patterns:
        assert not any(f"\\{c}" in pattern for c in "sSwWdDbB"), pattern
