"""Fuzz the API from its own OpenAPI schema with schemathesis, against a real server process:
whatever the generated request, the answer is never a 5xx, and every 4xx is a JSON error."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.test_serve import digits_onnx, multilabel_onnx  # noqa: F401
from tests.test_serve_cli import free_port, running_server

SERVE_ARGS = ["--max-upload-mb", "1", "--max-pixels", "1000000", "--timeout", "20", "--log-level", "warning"]
EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzz_server(digits_onnx, multilabel_onnx):  # noqa: F811
    import sys

    port = free_port()
    cmd = [sys.executable, "-m", "serve", "--model", f"digits={digits_onnx}", "--model", f"ml={multilabel_onnx}",
           "--port", str(port), "--max-batch", "4", "--max-wait-ms", "1", *SERVE_ARGS]
    with running_server(cmd, port) as url:
        yield url


def test_no_server_errors_on_any_generated_request(fuzz_server):
    """Every operation of the schema, EXAMPLES generated requests each (valid and invalid data:
    schemathesis' positive and negative modes), sent to the live server."""
    from hypothesis import given
    from hypothesis import strategies as st

    schema = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    seen: dict[str, set[int]] = {}

    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    runs = [(op, {}) for op in operations]
    # random model names only reach the 404; fuzz the real model's routes as well
    runs += [(op, {"path_parameters": {"name": "digits"}}) for op in operations if "{name}" in op.path]
    for operation, fixed in runs:
        @given(case=st.one_of([operation.as_strategy(mode, **fixed) for mode in modes]))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(base_url=fuzz_server, timeout=30)
            seen.setdefault(operation.label + (" (digits)" if fixed else ""), set()).add(response.status_code)
            assert response.status_code < 500, (operation.label, response.status_code, response.text[:300])
            if 400 <= response.status_code < 500:
                body = response.json()
                assert isinstance(body.get("error"), str) and body["error"], response.text[:300]

        check()
    assert len(seen) == len(runs)
    assert 400 in seen["POST /v2/models/{name}/infer (digits)"]  # bodies reached the tensor checks
    print({label: sorted(codes) for label, codes in seen.items()})


def test_server_still_serves_after_fuzzing(fuzz_server):
    import httpx

    assert httpx.get(fuzz_server + "/readyz").json()["ready"] is True
