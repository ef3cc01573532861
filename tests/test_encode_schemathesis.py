"""Schemathesis against the live server's OpenAPI schema: no 5xx and responses match the schema,
for the encode/export endpoints and every other documented one."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from tests.encode_fixtures import live_server  # noqa: F401

pytestmark = pytest.mark.slow
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
# Found by this test in endpoints this branch does not own; reported to their owner. Listed so the
# rest stays guarded; remove an entry once fixed (the test then insists it stays clean).
KNOWN: dict[str, str] = {}


def test_api_contract(live_server: str) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    failures: list[str] = []
    labels: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=60)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures
            if operation.label not in KNOWN or "date-time" not in str(exc):
                failures.append(f"{operation.label}: {str(exc)[:2000]}")
    assert "POST /api/v1/encode" in labels and "GET /api/v1/saes/{sae_id}/export.csv" in labels
    assert not failures, "\n\n".join(failures)
