"""The OpenAPI document is complete enough for a partner to generate a client from it."""

from __future__ import annotations

import re

import pytest
from crm_gateway import contract
from crm_gateway.app import create_app
from crm_gateway.routing import Service, compile_routes
from crm_gateway.services import SERVICES
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


def test_every_client_facing_rpc_has_a_route():
    """A method without an HTTP rule is internal; the list of those is short and deliberate."""
    unrouted = {m.name for s in SERVICES for m in s.descriptor.methods if contract.http_rule(m) is None}
    assert unrouted <= INTERNAL_RPCS | {"GetCustomFieldSchemas", "ResolveRecords", "CheckRecords"}, unrouted


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
            media = contract.media_type(plan.method)
            assert ok["content"] == {media: {"schema": {"type": "string", "format": "binary"}}}
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
    assert user["properties"]["version"]["type"] == "integer"
    status = next(a for a in user["properties"]["status"]["anyOf"] if a.get("type") == "string")
    # Only a sign-up's own answer shows `pending`: its tenant has no other user until it verifies its address.
    assert status["enum"] == ["invited", "active", "deactivated", "pending"]
    assert user["properties"]["created_at"]["anyOf"][0]["format"] == "date-time"
    page = schemas["UserPage"]
    assert page["properties"]["items"]["items"] == {"$ref": "#/components/schemas/User"}
    assert "UserPatch" in schemas and "version" not in schemas["UserPatch"]["properties"]
    assert "status" not in schemas["UserPatch"]["properties"]

    users = doc["paths"]["/api/v1/users"]
    params = {p["name"]: p for p in users["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 200 and params["limit"]["schema"]["default"] == 50
    assert {"cursor", "q", "status", "department_id"} <= params.keys()
    assert "unspecified" not in str(params["status"]["schema"]).lower()
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
    # Integer parameters are bounded by their type: a 64-bit value in a 32-bit parameter is a 422, not a 500.
    depth = {p["name"]: p for p in doc["paths"]["/api/v1/accounts/{id}/graph"]["get"]["parameters"]}["depth"]
    assert depth["schema"]["anyOf"][0]["maximum"] == 2**31 - 1


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


def test_a_new_service_is_its_protos_plus_one_line():
    """What the next service will do: annotate its protos and list it; the routes follow from the rules."""
    identity = next(s for s in SERVICES if s.name == "identity")
    plans = compile_routes([Service("other", identity.descriptor)])
    by_rpc = {p.rpc: p for p in plans}
    get = by_rpc["GetUser"]
    assert get.path == "/api/v1/users/{id}" and get.grpc_path == "/crm.identity.v1.IdentityService/GetUser"
    assert get.service.name == "other" and get.has_etag and get.status == 200
    create = by_rpc["CreateUser"]
    assert create.status == 201 and create.location == "/api/v1/users/{id}"
    assert by_rpc["DeleteDepartment"].status == 204
    assert by_rpc["UpdateUser"].patch and by_rpc["UpdateUser"].if_match
    assert by_rpc["ListUsers"].is_list
    assert by_rpc["CreateToken"].public and not get.public
    with pytest.raises(ValueError, match="operationId"):
        compile_routes([Service("a", identity.descriptor), Service("b", identity.descriptor)])
