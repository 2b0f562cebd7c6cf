"""Property-based run of schemathesis against the OpenAPI document of a live server: whatever
it generates for each operation (with acme's key), no answer is a 5xx and every answer matches
the documented schema, status codes and content types."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from crmcache.keyspace import TenantKeys
from tests.api_support import ACME

pytest_plugins = ("tests.api_fixtures",)

EXAMPLES_PER_OPERATION = 40


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
                case.call_and_validate(headers=ACME)

            check()
