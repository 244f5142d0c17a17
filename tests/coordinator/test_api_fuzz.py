"""Property-based fuzzing of the whole HTTP API from its OpenAPI schema
(schemathesis): whatever a client sends, the coordinator answers without a
server error."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fleet import ADMIN, enroll, register_model, start_round
from tests.support.live import LiveServer


def test_no_server_errors_whatever_the_input(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as api:
        # Some state for the fuzzer to hit: a served model, a device and an open round.
        register_model(api)
        (device,) = enroll(api, 1)
        start_round(api)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 20
    identities = st.sampled_from([ADMIN, device.auth, {"Authorization": "Bearer not-a-credential"}, {}])
    failures: list[str] = []

    seen: set[str] = set()

    @settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              database=None)
    @given(case=st.one_of(*(op.as_strategy() for op in operations)), headers=identities)
    def run(case: schemathesis.Case, headers: dict[str, str]) -> None:
        response = case.call(headers=headers)
        seen.add(f"{case.method} {case.path}")
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")

    run()
    assert failures == []
    assert len(seen) >= 15, seen  # the draw really spread over the API
