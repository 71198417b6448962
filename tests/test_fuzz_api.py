"""Property-based fuzzing of every endpoint of the OpenAPI schema (schemathesis, on hypothesis): whatever the
parameters, bodies and uploads, no answer is a 5xx, and every error is a JSON body with a reason.

Bounded (FUZZ_EXAMPLES per operation, no example database) so that it runs in the suite. Admin operations are
called with the token so that their validation is reached; their jobs do no work (no network), and the
address guard resolves no names (fuzzed host names never reach a DNS server)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from devserver import build_library  # noqa: E402

TOKEN = "fuzz-admin-token"
FUZZ_EXAMPLES = int(os.environ.get("NELS_TEST_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    from nels.web.app import create_app

    lib = build_library(tmp_path_factory.mktemp("fuzzlib"))
    app = create_app(lib, admin_token=TOKEN, max_upload_bytes=512 * 1024)
    app.state.nels.jobs.handlers = {"crawl": lambda lib, p: {"added": 0}, "ingest": lambda lib, p: {"added": 0}}
    return app


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    # positive (valid by the schema) and negative (out of it: huge ids, wrong types, missing fields) input
    schema.config.generation.update(modes=list(schemathesis.GenerationMode))
    return schema


@pytest.fixture
def no_dns(monkeypatch):
    """Name resolution for the guard: IP literals only (a fuzzed name is "cannot resolve", offline)."""
    import ipaddress

    import nels.sources.guard as guard

    def literal_only(host, port):
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "not resolved in tests") from None

    monkeypatch.setattr(guard, "resolve", literal_only)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_no_endpoint_answers_5xx_and_every_error_is_json(case, no_dns):
    admin = case.path.startswith("/api/admin")
    headers = {**(case.headers or {}), **({"Authorization": f"Bearer {TOKEN}"} if admin else {})}
    response = case.call(headers=headers)
    body = response.content.decode("utf-8", "replace")
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {body[:300]}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        ctype = response.headers.get("content-type") or [""]
        assert (ctype[0] if isinstance(ctype, list) else ctype).startswith("application/json"), where
        error = response.json().get("error")
        assert isinstance(error, str) and error, where

def test_the_fuzzed_schema_covers_every_route(api_schema):
    ops = {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())}
    for need in [("GET", "/api/search"), ("POST", "/api/search"), ("GET", "/media/{clip_id}"),
                 ("GET", "/api/spectrogram/{clip_id}.png"), ("POST", "/api/feedback"), ("GET", "/api/stats"),
                 ("POST", "/api/admin/ingest"), ("GET", "/api/admin/jobs/{job_id}")]:
        assert need in ops, (need, sorted(ops))
    assert Path(__file__).name  # the suite runs this file: see FUZZ_EXAMPLES for the bound
