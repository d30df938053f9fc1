"""The OpenAPI document is complete enough for a partner to generate a client from it."""

from __future__ import annotations

import re

import pytest
from crm.identity.v1 import identity_pb2
from crm_gateway.app import create_app
from crm_gateway.routing import Route, RoutePlan, ServiceRoutes, compile_routes
from crm_gateway.services import SERVICES
from crm_gateway.services.identity import IDENTITY
from crm_gateway.settings import GatewaySettings

# Called by the gateway itself or by other services, never by clients.
INTERNAL_RPCS = {"AuthenticateApiKey", "GetPolicy"}


@pytest.fixture(scope="module")
def app():
    return create_app(GatewaySettings(environment="test"))


@pytest.fixture(scope="module")
def doc(app):
    return app.openapi()


def _resolve(doc, ref):
    assert ref.startswith("#/components/schemas/"), ref
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_every_client_facing_rpc_of_identity_has_a_route():
    routed = {r.rpc for r in IDENTITY.routes}
    offered = {m.name for m in IDENTITY.service.methods}
    assert offered - routed == INTERNAL_RPCS


def test_every_route_has_request_and_response_schemas(doc):
    plans = compile_routes(SERVICES)
    for plan in plans:
        op = doc["paths"][plan.path][plan.http_method.lower()]
        if plan.body_model is not None:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            body = _resolve(doc, schema["$ref"])
            assert body["properties"] and body["additionalProperties"] is False, plan.path
        ok = op["responses"][str(plan.status)]
        if plan.status == 204:
            assert "content" not in ok
        elif plan.binary:  # a file (e.g. a quote's PDF): its media type, bytes
            assert ok["content"] == {plan.route.binary: {"schema": {"type": "string", "format": "binary"}}}
        else:
            schema = ok["content"]["application/json"]["schema"]
            assert schema.get("$ref") or schema.get("type") == "object", (plan.path, schema)
            if "$ref" in schema:
                assert _resolve(doc, schema["$ref"])["properties"], plan.path
        for code in ("422", "429", "default"):
            problem = op["responses"][code]["content"]["application/problem+json"]["schema"]
            assert problem == {"$ref": "#/components/schemas/Problem"}
        assert "application/json" not in op["responses"]["422"]["content"]


def test_every_reference_resolves_and_no_fastapi_leftovers(doc):
    for ref in set(_refs(doc)):
        _resolve(doc, ref)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_shapes_partners_rely_on(doc):
    schemas = doc["components"]["schemas"]
    user = schemas["User"]
    assert user["properties"]["version"]["type"] == "string"
    assert user["properties"]["status"]["enum"][1:] == [
        "USER_STATUS_INVITED",
        "USER_STATUS_ACTIVE",
        "USER_STATUS_DEACTIVATED",
        # Only a sign-up's own answer shows it: its tenant has no other user until it verifies its address.
        "USER_STATUS_PENDING",
    ]
    assert user["properties"]["created_at"]["format"] == "date-time"
    page = schemas["UserPage"]
    assert page["properties"]["items"]["items"] == {"$ref": "#/components/schemas/User"}
    assert "UserUpdate" in schemas and "version" not in schemas["UserUpdate"]["properties"]
    assert "status" not in schemas["UserUpdate"]["properties"]

    users = doc["paths"]["/api/v1/users"]
    params = {p["name"]: p for p in users["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 200 and params["limit"]["schema"]["default"] == 50
    assert {"cursor", "q", "status", "department_id"} <= params.keys()
    assert "USER_STATUS_UNSPECIFIED" not in str(params["status"]["schema"])
    post_params = {p["name"] for p in users["post"]["parameters"]}
    assert "Idempotency-Key" in post_params
    assert users["post"]["responses"]["201"]["headers"]["Location"]
    patch = doc["paths"]["/api/v1/users/{id}"]["patch"]
    assert "If-Match" in {p["name"] for p in patch["parameters"]}
    assert "412" in patch["responses"]
    audit = {p["name"]: p for p in doc["paths"]["/api/v1/audit-events"]["get"]["parameters"]}
    assert {
        "actor_id",
        "object_type",
        "object_id",
        "action",
        "occurred_after",
        "occurred_before",
    } <= audit.keys()


def test_security_is_declared_per_route(doc):
    assert set(doc["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyAuth"}
    assert doc["paths"]["/api/v1/auth/token"]["post"]["security"] == []
    assert doc["paths"]["/.well-known/jwks.json"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/api/v1/me"]["get"]  # the global one: bearer or API key
    assert doc["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]


async def test_docs_and_document_are_served(offline_api):
    r = await offline_api.get("/openapi.json")
    assert r.status_code == 200 and r.json()["paths"]
    docs = await offline_api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Everything the page loads comes from the gateway itself (no CDN), so it works behind any firewall.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        assert (await offline_api.get(asset)).status_code == 200, asset


def test_a_new_service_is_a_route_list():
    """What the next service will do: a proto and routes; the compiler checks the routes against the proto."""
    svc = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]
    plans = compile_routes(
        [ServiceRoutes(name="other", service=svc, routes=[Route("GET", "/x/{id}", "GetUser")])]
    )
    assert (
        plans[0].path == "/api/v1/x/{id}" and plans[0].grpc_path == "/crm.identity.v1.IdentityService/GetUser"
    )
    with pytest.raises(ValueError, match="no method"):
        RoutePlan(ServiceRoutes(name="o", service=svc, routes=[]), Route("GET", "/x", "Nope"))
    with pytest.raises(ValueError, match="path parameter"):
        RoutePlan(ServiceRoutes(name="o", service=svc, routes=[]), Route("GET", "/x/{nope}", "GetUser"))
    with pytest.raises(ValueError, match="unwrap"):
        RoutePlan(
            ServiceRoutes(name="o", service=svc, routes=[]), Route("GET", "/x/{id}", "GetUser", unwrap="x")
        )
    with pytest.raises(ValueError, match="operationId"):
        compile_routes(
            [ServiceRoutes(name="o", service=svc, routes=[Route("GET", "/a/{id}", "GetUser")] * 2)]
        )
