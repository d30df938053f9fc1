"""Every error is an RFC 9457 problem: the gateway's own, FastAPI's, the services' and the unexpected ones."""

from __future__ import annotations

import base64

import grpc
import pytest
from crm_gateway.problems import from_grpc
from crm_kit import errors

from tests.gateway.conftest import assert_problem, gateway_settings, running_gateway


def rpc_error(error: errors.DomainError) -> grpc.aio.AioRpcError:
    """What a client of a service catches when the service raised `error` (the kit's real status encoding)."""
    status = errors.to_status(error)
    return grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), status.details
    )


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.InvalidArgument("bad"), 422, "validation_failed"),
        (errors.not_found("user", "u1"), 404, "user_not_found"),
        (errors.AlreadyExists("dup"), 409, "already_exists"),
        (errors.Conflict("busy", reason="department_has_members"), 409, "department_has_members"),
        (errors.VersionMismatch("stale"), 412, "version_mismatch"),
        (errors.PermissionDenied("no"), 403, "permission_denied"),
        (errors.Unauthenticated("who", reason="token_expired"), 401, "token_expired"),
        (errors.TooManyRequests("slow down", reason="locked_out"), 429, "locked_out"),
        (errors.DomainError("boom: password=hunter2"), 500, "internal"),
    ],
)
def test_grpc_statuses_map_to_http_problems(error, status, code):
    problem = from_grpc(rpc_error(error))
    assert (problem.status, problem.code) == (status, code)
    if status == 500:
        assert "hunter2" not in problem.detail  # a service's internals never reach the client
    if status == 401:
        assert problem.headers["WWW-Authenticate"].startswith('Bearer realm="crm", error="invalid_token"')
    if status == 429:
        assert problem.headers["Retry-After"]


def test_field_violations_become_errors():
    error = errors.InvalidArgument(
        "invalid input",
        field_errors=[errors.FieldError("email", "is not valid"), errors.FieldError("name", "is required")],
    )
    problem = from_grpc(rpc_error(error))
    assert problem.errors == [
        {"field": "email", "message": "is not valid"},
        {"field": "name", "message": "is required"},
    ]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_transport_failures_without_details(code, status):
    err = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused at 10.0.0.3"
    )
    problem = from_grpc(err)
    assert problem.status == status
    assert "10.0.0.3" not in problem.detail


async def test_unknown_route_and_method(offline_api):
    problem = assert_problem(await offline_api.get("/api/v1/nothing-here"), 404, "route_not_found")
    assert problem["instance"] == "/api/v1/nothing-here"
    r = await offline_api.put("/api/v1/auth/token", json={})
    assert_problem(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]
    # Allow names every method of the path, not only the first route's.
    r = await offline_api.put("/api/v1/accounts/01939a00-0000-7000-8000-000000000000", json={})
    assert_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "DELETE, GET, PATCH"


async def test_bodies_that_are_not_json(offline_api):
    r = await offline_api.post(
        "/api/v1/auth/token", content=b'{"email": "a@b.c", ', headers={"content-type": "application/json"}
    )
    assert_problem(r, 400, "malformed_json")
    r = await offline_api.post(
        "/api/v1/auth/token", content=b"email=a", headers={"content-type": "text/plain"}
    )
    assert_problem(r, 415, "unsupported_media_type")
    r = await offline_api.post(
        "/api/v1/auth/token", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert_problem(r, 422, "validation_failed")
    r = await offline_api.post(
        "/api/v1/auth/token", content=b"", headers={"content-type": "application/json"}
    )
    assert_problem(r, 422, "validation_failed")


async def test_oversized_bodies_are_refused_before_reading(offline_api):
    big = b'{"email": "' + b"a" * 2_000_000 + b'"}'
    r = await offline_api.post(
        "/api/v1/auth/token", content=big, headers={"content-type": "application/json"}
    )
    assert_problem(r, 413, "body_too_large")

    async def chunks():
        for _ in range(40):
            yield b"a" * 65536

    r = await offline_api.post(
        "/api/v1/auth/token", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(r, 413, "body_too_large")


async def test_validation_problems_name_every_field(offline_api):
    r = await offline_api.post(
        "/api/v1/auth/signup", json={"tenant_name": 1, "email": None, "extra": True, "password": ["x"]}
    )
    problem = assert_problem(r, 422, "validation_failed")
    # Wrong types, an unknown field, and the required fields null or missing: all named at once.
    assert {e["field"] for e in problem["errors"]} == {"tenant_name", "email", "extra", "password", "name"}
    assert all(e["message"] for e in problem["errors"])


async def test_a_service_that_is_down_is_a_503(offline_api):
    r = await offline_api.post("/api/v1/auth/token", json={"email": "a@example.com", "password": "x"})
    assert_problem(r, 503, "unavailable")
    assert r.headers["retry-after"]
    # An authenticated route cannot even fetch the key set: still a 503, not a 401 or a 500.
    header = base64.urlsafe_b64encode(b'{"alg":"EdDSA","kid":"k1"}').rstrip(b"=").decode()
    r = await offline_api.get("/api/v1/me", headers={"Authorization": f"Bearer {header}.e30.c2ln"})
    assert_problem(r, 503, "unavailable")
    ready = await offline_api.get("/readyz")
    assert ready.status_code == 503 and ready.json()["services"]["identity"].startswith("unreachable")
    assert (await offline_api.get("/healthz")).status_code == 200


async def test_an_unexpected_error_is_a_500_problem_without_internals(test_infra, monkeypatch):
    async with running_gateway(gateway_settings(test_infra)) as client:
        plan = next(p for p in client.app.state.plans if p.operation_id == "create_token")

        def explode(values):
            raise RuntimeError("secret internals")

        monkeypatch.setattr(plan, "build_request", explode)
        r = await client.post("/api/v1/auth/token", json={"email": "a@example.com", "password": "x"})
        problem = assert_problem(r, 500, "internal")
        assert "secret" not in r.text
        assert problem["request_id"] == r.headers["x-request-id"]


async def test_the_request_id_is_kept_or_made(offline_api):
    r = await offline_api.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await offline_api.get("/healthz", headers={"X-Request-ID": "bad id; with spaces"})
    assert r.headers["x-request-id"] != "bad id; with spaces" and r.headers["x-request-id"]


async def test_public_routes_are_limited_per_client_address(test_infra):
    async with running_gateway(gateway_settings(test_infra, rate_limit_public="2/minute")) as client:
        for _ in range(2):
            r = await client.post("/api/v1/auth/token", json={"email": "a@example.com", "password": "x"})
            assert r.status_code == 503 and r.headers["ratelimit-limit"] == "2"
        r = await client.post("/api/v1/auth/token", json={"email": "a@example.com", "password": "x"})
        assert_problem(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-remaining"] == "0"


async def test_access_log_keeps_failures_by_default(offline_api, caplog):
    caplog.set_level("INFO", logger="crm.gateway.access")
    await offline_api.get("/healthz")
    await offline_api.get("/api/v1/nothing-here", headers={"X-Request-ID": "req-404"})
    lines = [r for r in caplog.records if r.name == "crm.gateway.access"]
    assert [(r.status, r.path) for r in lines] == [(404, "/api/v1/nothing-here")]
