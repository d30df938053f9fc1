"""The FastAPI application: the compiled route table, health, problems everywhere, and the OpenAPI document."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import orjson
from crm_kit.telemetry import metrics_enabled, tracing_enabled
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.responses import Response
from starlette.routing import Match, get_route_path

from crm_gateway import contract, files, problems
from crm_gateway.middleware import EdgeMiddleware
from crm_gateway.routing import RoutePlan, Service, compile_routes
from crm_gateway.runtime import Gateway
from crm_gateway.services import SERVICES
from crm_gateway.settings import GatewaySettings
from crm_gateway.tenant_schema import TenantDocuments

DESCRIPTION = """\
The public REST API of the CRM. JSON in and out, field names in snake_case, ids are strings.

**Authentication**: `Authorization: Bearer <access token>` (from `POST /api/v1/auth/token`) or, for
partner integrations, `X-API-Key: <key>`. The tenant is always the credential's.

**Errors** are RFC 9457 `application/problem+json` documents with a stable `code` and, for invalid input
(422 `validation_failed`), `errors: [{field, message}]`.

**Lists** take `limit` (1–200, default 50) and an opaque `cursor`, and answer
`{"items": [...], "next_cursor": "..." | null}`.

**Retries**: every POST honours `Idempotency-Key` (24 h): the same key and body replay the first answer;
the same key with another body is a 422; a request still running under the key is a 409 (retry shortly).

**Concurrency**: single objects carry `ETag: "<version>"`; send it back as `If-Match` on PATCH/PUT/DELETE (and on the
actions that change an object, such as a stage move or a merge) to get 412 instead of overwriting someone else's change. Without If-Match the change is unconditional.

**Rate limits** per tenant and per API key; every limited response has `RateLimit-Limit`,
`RateLimit-Remaining`, `RateLimit-Reset`, and a refused one is a 429 with `Retry-After`.

**Shapes** (docs/api-style.md): a create body is the object itself and its answer is the object; every field
of an answer is present, `null` when it has no value; enums are short lower-case words, the same in bodies,
filters and query parameters; versions, counts and durations are JSON numbers, money is a decimal string;
times are RFC 3339.

**Custom fields**: in this document `custom_fields` of accounts and contacts is an open object (each company
defines its own); `GET /api/v1/openapi.json` is the caller's company's document, with them typed.
"""


class LiteralPrefixRoute(APIRoute):
    """An APIRoute that turns a request away on the literal start of its path before trying its pattern.

    The router tries routes in order until one matches, and the gateway has a few hundred: testing each
    pattern cost more than anything else the gateway does for a request (170 µs for a route halfway down the
    table, profiled under load). A path that does not begin with the route's literal prefix (everything before
    its first `{`) cannot match it, so that one `startswith` answers for most routes."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.literal_prefix = path.split("{", 1)[0]

    def matches(self, scope: dict[str, Any]) -> tuple[Match, dict[str, Any]]:
        if scope["type"] == "http" and not get_route_path(scope).startswith(self.literal_prefix):
            return Match.NONE, {}
        return super().matches(scope)


REQUIRED_FOR_READINESS = frozenset({"identity"})
# The tenant's own OpenAPI document (authenticated), beside the public /openapi.json.
TENANT_OPENAPI = "/api/v1/openapi.json"
# Operations outside the route table that take no credential.
PUBLIC_OPERATIONS = frozenset({"healthz", "readyz"})


def create_app(
    settings: GatewaySettings | None = None,
    services: Sequence[Service] = SERVICES,
) -> FastAPI:
    settings = settings or GatewaySettings()
    plans = compile_routes(services)
    upload_download = files.file_plans(services, plans)
    gateway = Gateway(settings, services, plans)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    # Interactive docs served from the gateway itself, not a CDN: they must work behind any firewall.
    app = FastAPIOffline(
        title="CRM API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
        static_url="/docs-assets",
        # FastAPI's own request spans and metrics follow the kit's exporter settings: the kit always installs a
        # tracer provider (for trace ids), and spans or metrics that nobody exports would cost every request.
        # Logs stay with the kit's JSON logging; probes are never traced.
        telemetry={
            "tracing": tracing_enabled(),
            "operation_spans": tracing_enabled(),
            "metrics": metrics_enabled(),
            "logs": False,
            "exclude": lambda scope: scope.get("path") in ("/healthz", "/readyz"),
        },
    )
    app.state.gateway = gateway
    app.state.plans = plans
    app.router.route_class = LiteralPrefixRoute
    problems.install(app)

    # A literal segment is matched before a parameter (/accounts/count before /accounts/{id}).
    for plan in sorted(plans, key=lambda p: _specificity(p.path)):
        app.add_api_route(
            plan.path,
            _endpoint(gateway, plan),
            methods=[plan.http_method],
            status_code=plan.status,
            response_model=plan.response_model,
            operation_id=plan.operation_id,
            summary=plan.summary,
            tags=[plan.tag],
            description=_describe(plan),
        )

    @app.get("/healthz", tags=["operations"], summary="The process is alive", operation_id="healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Identity answers (every request's credential depends on it); every service's state is listed",
        operation_id="readyz",
    )
    async def readyz() -> Response:
        # Only identity gates readiness: with another service down, only its routes answer 503, rather than
        # the whole API leaving the load balancer.
        states = await gateway.ready()
        ok = all(state == "SERVING" for name, state in states.items() if name in REQUIRED_FOR_READINESS)
        return Response(
            orjson.dumps({"status": "ready" if ok else "not_ready", "services": states}),
            status_code=200 if ok else 503,
            media_type="application/json",
        )

    app.openapi = lambda: _openapi(app, plans, upload_download, settings.max_body_bytes)  # type: ignore[method-assign]
    documents = app.state.tenant_documents = TenantDocuments(gateway, app.openapi)

    @app.get(
        TENANT_OPENAPI,
        tags=["operations"],
        summary="This API's OpenAPI document for the caller's tenant: `custom_fields` typed by its custom fields",
        description="The document of `/openapi.json`, in which the `custom_fields` of accounts and contacts "
        "(answers, create and PATCH bodies) have a property per custom field of the caller's tenant, typed "
        "(text, number, decimal string, date, date-time, boolean, enum, array of enum, uri, email, phone) "
        "with its labels and the required ones. Changes to custom fields show within 30 seconds.",
        operation_id="get_tenant_openapi",
    )
    async def tenant_openapi(request: Request) -> Response:
        path = request.scope["path"]
        limit_headers: dict[str, str] = {}
        try:
            caller, limit_headers = await gateway.admit(request, public=False)
            assert caller is not None
            body = await documents.document(caller.principal)
        except problems.ProblemError as exc:
            return problems.render(exc, path, limit_headers)
        except grpc.RpcError as exc:
            return problems.render(problems.from_grpc(exc), path, limit_headers)
        headers = {**limit_headers, "Cache-Control": "private, max-age=30"}
        return Response(body, media_type="application/json", headers=headers)

    # Uploads and downloads (imports, exports, reports) stream in chunks beside the JSON routes.
    file_plans = files.mount(app, gateway, upload_download)
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
        uploads=[files.upload_pattern(p) for p in file_plans if p.upload],
        max_upload_bytes=settings.max_upload_bytes,
        trusted_proxies=settings.trusted_proxy_networks,
    )
    if settings.cors_origin_list:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "If-None-Match",
                "X-Request-ID",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "X-Request-ID",
                "Idempotent-Replayed",
            ],
            max_age=600,
        )
    return app


def _endpoint(gateway: Gateway, plan: RoutePlan) -> Any:
    async def endpoint(request: Request, **values: Any) -> Response:
        return await gateway.handle(plan, request, values)

    endpoint.__signature__ = plan.signature  # type: ignore[attr-defined]
    endpoint.__name__ = plan.operation_id
    return endpoint


def _specificity(path: str) -> tuple[int, ...]:
    return tuple(1 if part.startswith("{") else 0 for part in path.split("/"))


def _describe(plan: RoutePlan) -> str:
    notes = [plan.description] if plan.description else []
    notes.append(f"gRPC `{plan.method.full_name}`.")
    if plan.public:
        notes.append("Takes no credential.")
    if plan.is_list:
        notes.append("A page of at most `limit` items; follow `next_cursor` for the next one.")
    if plan.patch:
        notes.append("Send only the fields to change; `null` clears a field.")
    if plan.if_match:
        notes.append('Send `If-Match: "<version>"` to make the change conditional (412 when stale).')
    return " ".join(notes)


# ---------------------------------------------------------------- OpenAPI

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
RATE_HEADERS = {
    "RateLimit-Limit": {
        "description": "Requests allowed in the current window.",
        "schema": {"type": "integer"},
    },
    "RateLimit-Remaining": {"description": "Requests left in the window.", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "Seconds until the window resets.", "schema": {"type": "integer"}},
}


def _problem_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _openapi(
    app: FastAPI, plans: Sequence[RoutePlan], file_plans: Sequence[files.FilePlan], max_body_bytes: int
) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    problem_schema = problems.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in problem_schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas["Problem"] = problem_schema
    components["securitySchemes"] = SECURITY_SCHEMES
    doc["security"] = [{"bearerAuth": []}, {"apiKeyAuth": []}]

    by_id = {p.operation_id: p for p in plans}
    file_ids = {p.operation_id: p for p in file_plans}
    for path_item in doc.get("paths", {}).values():
        for op in path_item.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            file_plan = file_ids.get(op.get("operationId", ""))
            if file_plan is not None:
                _document_file_route(op, file_plan)
                continue
            plan = by_id.get(op.get("operationId", ""))
            if plan is None:  # health, the tenant document
                if op.get("operationId") in PUBLIC_OPERATIONS:
                    op["security"] = []
                else:
                    for code, text in (
                        ("401", "Missing, invalid or expired credential."),
                        ("429", "Rate limit reached."),
                        ("503", "A service behind the gateway is unavailable; retry later."),
                        ("default", "Any other error."),
                    ):
                        responses[code] = _problem_response(text)
                continue
            if plan.public:
                op["security"] = []
            if "requestBody" in op:  # every input is bounded: the body as a whole too (413 beyond)
                op["requestBody"]["description"] = f"A JSON body of at most {max_body_bytes} bytes."
                op["requestBody"]["x-max-body-bytes"] = max_body_bytes
            ok = responses.get(str(plan.status))
            if ok is not None and plan.binary:
                ok["content"] = {
                    contract.media_type(plan.method): {"schema": {"type": "string", "format": "binary"}}
                }
            if ok is not None:
                headers = ok.setdefault("headers", {})
                if not plan.public:
                    headers.update(copy.deepcopy(RATE_HEADERS))
                if plan.has_etag:
                    headers["ETag"] = {
                        "description": 'The object\'s version, e.g. `"3"`.',
                        "schema": {"type": "string"},
                    }
                if plan.location:
                    headers["Location"] = {
                        "description": "Where the new object lives.",
                        "schema": {"type": "string"},
                    }
                if plan.idempotent:
                    headers["Idempotent-Replayed"] = {
                        "description": "`true` when this is the stored answer to an earlier request with the same "
                        "Idempotency-Key.",
                        "schema": {"type": "string"},
                    }
                if not headers:
                    ok.pop("headers")
            errors = {"400": "Malformed request (bad JSON, bad header)."}
            if not plan.public:
                errors["401"] = "Missing, invalid or expired credential."
                errors["403"] = "The credential may not do this."
            if plan.path_fields:
                errors["404"] = "No such object in the caller's tenant."
            if plan.http_method != "GET":
                errors["409"] = (
                    "Conflicts with the object's state, or an Idempotency-Key request is still running."
                )
            if plan.if_match:
                errors["412"] = "If-Match is stale: the object changed since."
            if plan.body_model is not None:
                errors["413"] = "The body is too large."
                errors["415"] = "The body is not JSON."
            errors["422"] = "Invalid input; `errors` names each field."
            for code, text in errors.items():
                responses[code] = _problem_response(text)
            responses["429"] = _problem_response(
                "Rate limit reached.",
                {
                    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
                    **RATE_HEADERS,
                },
            )
            responses["503"] = _problem_response("A service behind the gateway is unavailable; retry later.")
            responses["default"] = _problem_response("Any other error.")
    app.openapi_schema = doc
    return doc


def _document_file_route(op: dict[str, Any], plan: files.FilePlan) -> None:
    notes = [plan.description] if plan.description else []
    notes.append(f"gRPC `{plan.method.full_name}`.")
    op["description"] = " ".join(notes)
    responses = op.setdefault("responses", {})
    errors = {
        "400": "Malformed request.",
        "401": "Missing, invalid or expired credential.",
        "403": "The credential may not do this.",
        "422": "Invalid input; `errors` names each field.",
        "429": "Rate limit reached.",
        "503": "A service behind the gateway is unavailable; retry later.",
        "default": "Any other error.",
    }
    if plan.path_fields:
        errors["404"] = "No such object in the caller's tenant."
    if plan.upload:
        errors["409"] = "An Idempotency-Key request is still running."
        errors["413"] = "The file is too large."
        errors["415"] = "The body is not multipart/form-data."
    for code, text in errors.items():
        responses[code] = _problem_response(text)
