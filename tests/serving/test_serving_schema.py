"""Schemathesis over the live service's OpenAPI schema: no input may produce a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from conftest import Registered, serve_settings
from hypothesis import HealthCheck, given, settings
from live import ServerThread
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from serving.app import create_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(registered: Registered) -> Iterator[schemathesis.schemas.BaseSchema]:
    """The schema as the running service publishes it, bound to that service."""
    app = create_app(serve_settings(registered, access_log=False))
    with ServerThread(app) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


MAX_EXAMPLES = 100  # per operation; the whole run takes seconds


def test_no_server_errors(api_schema: schemathesis.schemas.BaseSchema) -> None:
    """Every operation, with generated valid and invalid bodies: never a 5xx, and answers that
    conform to the documented schema."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/rank", "/v1/match", "/readyz", "/metrics"}
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                checks=[not_a_server_error, response_schema_conformance]
            )
            calls.append(response.status_code)

        run()
    assert len(calls) >= 2 * len(operations)
    assert all(code < 500 for code in calls)
