"""RFC 9457 problem details: the one error shape of the public API, whatever went wrong and wherever.

    {"type": "urn:crm:problem:not_found", "title": "Not Found", "status": 404, "detail": "user … not found",
     "instance": "/api/v1/users/…", "code": "user_not_found", "request_id": "…",
     "errors": [{"field": "email", "message": "…"}]}          # errors only for validation problems

`code` is the stable machine-readable reason (the service's google.rpc.ErrorInfo reason, or the gateway's own);
`type` is derived from it. A problem may carry more members that its `code` documents (RFC 9457 extension
members, e.g. `duplicates` on `duplicate_found`); they come from the service's error (`DomainError.extensions`). Services never invent HTTP errors: they raise crm_kit.errors.DomainError, the kit
turns that into a gRPC status with details, and `from_rpc_error` here turns the status into a problem.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import grpc
import orjson
from crm_kit import context
from crm_kit.errors import from_rpc_error
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

log = logging.getLogger("crm.gateway")

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:crm:problem:"


class FieldIssue(BaseModel):
    """One invalid input of a validation problem."""

    field: str = Field(description="The offending input, e.g. `email`, `permissions[0].actions`, `limit`.")
    message: str = Field(description="What is wrong with it.")


class Problem(BaseModel):
    """An RFC 9457 problem; every error response of the API has this shape. Some codes add members of their
    own, e.g. `duplicate_found` (409) lists the existing records in `duplicates` (DuplicateCandidate objects)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the kind of problem: `urn:crm:problem:<code>`.")
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="Human-readable explanation of this occurrence.")
    instance: str = Field(description="The path of the request that failed.")
    code: str = Field(
        description="Stable machine-readable reason, e.g. `user_not_found`, `version_mismatch`."
    )
    request_id: str = Field("", description="Quote this when reporting a problem.")
    errors: list[FieldIssue] | None = Field(None, description="Per-field errors of a validation problem.")


class ProblemError(Exception):
    """Raise anywhere in the gateway to answer with a problem."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extensions = extensions or {}


def render(problem: ProblemError, instance: str, extra_headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + problem.code,
        "title": _phrase(problem.status),
        "status": problem.status,
        "detail": problem.detail,
        "instance": instance,
        "code": problem.code,
        "request_id": context.current().request_id,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    for name, value in problem.extensions.items():
        body.setdefault(name, value)  # never instead of a standard member
    headers = {**problem.headers, **(extra_headers or {})}
    return Response(orjson.dumps(body), status_code=problem.status, media_type=MEDIA_TYPE, headers=headers)


# RFC 9110's names where Python's http module still has RFC 7231's.
_PHRASES = {413: "Content Too Large", 422: "Unprocessable Content"}


def _phrase(status: int) -> str:
    if status in _PHRASES:
        return _PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# ---------------------------------------------------------------- gRPC status → problem

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.OUT_OF_RANGE: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 412,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
# What a client sees when a service failed in a way that is not the client's business.
_INTERNAL = {
    500: ("internal", "an internal error occurred; quote the request_id when reporting it"),
    501: ("not_implemented", "this operation is not implemented yet"),
    503: ("unavailable", "a service is unavailable or too slow right now; retry later"),
}


def from_grpc(err: grpc.RpcError) -> ProblemError:
    details = from_rpc_error(err)
    status = GRPC_TO_HTTP.get(details.code, 500)
    if status >= 500:
        log.warning("service call failed: %s %s", details.code.name, details.message)
        code, detail = _INTERNAL.get(status, _INTERNAL[500])
        headers = {"Retry-After": "1"} if status == 503 else None
        return ProblemError(status, code, detail, headers=headers)
    errors = [{"field": f.field, "message": f.message} for f in details.field_errors]
    headers = {}
    if status == 429:
        # The service did not say for how long (e.g. a sign-in lockout); a minute is a safe hint.
        headers["Retry-After"] = "60"
    if status == 401:
        headers["WWW-Authenticate"] = www_authenticate(details.reason or "invalid_token", details.message)
    return ProblemError(
        status,
        details.reason or _default_code(status),
        details.message or _phrase(status),
        errors=errors if status == 422 else None,
        headers=headers,
        extensions=details.extensions,
    )


def _default_code(status: int) -> str:
    return {
        401: "unauthenticated",
        403: "permission_denied",
        404: "not_found",
        409: "conflict",
        412: "version_mismatch",
        422: "validation_failed",
        429: "too_many_requests",
    }.get(status, "error")


def www_authenticate(error: str = "", description: str = "") -> str:
    """RFC 6750 challenge; `error` is left out when no credential was sent at all."""
    value = 'Bearer realm="crm"'
    if error:
        oauth_error = "invalid_request" if error == "invalid_request" else "invalid_token"
        safe = description.replace('"', "'").replace("\\", "")[:200]
        value += f', error="{oauth_error}", error_description="{safe}"'
    return value


# ---------------------------------------------------------------- FastAPI's own errors → problem


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header", "cookie") else list(loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or (str(loc[0]) if loc else "body")


def field_problem(field: str, message: str) -> ProblemError:
    """The 422 of one bad input the gateway checks itself, in the shape of `from_validation`'s: detail
    "<field> <message>", and the field in `errors`."""
    return ProblemError(
        422, "validation_failed", f"{field} {message}", errors=[{"field": field, "message": message}]
    )


def from_validation(exc: RequestValidationError) -> ProblemError:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        message = (first.get("ctx") or {}).get("error", "invalid JSON")
        return ProblemError(400, "malformed_json", f"the request body is not valid JSON: {message}")
    issues = [
        {"field": _field_path(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))} for e in errors
    ]
    fields = ", ".join(dict.fromkeys(i["field"] for i in issues))
    return ProblemError(422, "validation_failed", f"invalid input: {fields}", errors=issues)


def install(app: FastAPI) -> None:
    """Every error FastAPI or Starlette would answer becomes a problem."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return render(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return render(from_validation(exc), request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "route_not_found", 405: "method_not_allowed"}.get(
            exc.status_code, _default_code(exc.status_code)
        )
        detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return render(ProblemError(exc.status_code, code, detail, headers=headers), request.url.path)

    async def on_grpc(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, grpc.RpcError)
        return render(from_grpc(exc), request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render(ProblemError(500, *_INTERNAL[500]), request.url.path)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(grpc.RpcError, on_grpc)
    app.add_exception_handler(Exception, on_unexpected)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    scope = {**request.scope, "method": "\0"}
    for route in request.app.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def internal_error() -> ProblemError:
    return ProblemError(500, *_INTERNAL[500])
