"""Every input has a length bound at the edge (crm_gateway.bounds): shown in /openapi.json, enforced as a 422
problem (never a 500, never passed on to a service). Walks the document, so a new route or field is covered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from crm_gateway import bounds
from crm_kit.context import REQUEST_ID_MAX

from tests.gateway.conftest import assert_problem, sign_up

MAX_DEPTH = 4  # nested messages followed this deep (recursive ones stop here)


def _deref(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _variants(doc: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _deref(doc, schema)
    options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if options:
        return [v for o in options for v in _variants(doc, o)]
    return [schema]


def _leaves(doc: dict[str, Any], schema: dict[str, Any], path: tuple = (), depth: int = 0) -> Iterator[tuple]:
    """(path, schema) of every value a request can carry; a path step is a property name, [] for an array
    item, or {} for a map value."""
    for s in _variants(doc, schema):
        yield path, s
        if depth >= MAX_DEPTH:
            continue
        for name, prop in s.get("properties", {}).items():
            yield from _leaves(doc, prop, (*path, name), depth + 1)
        if isinstance(s.get("items"), dict):
            yield from _leaves(doc, s["items"], (*path, []), depth + 1)
        if isinstance(s.get("additionalProperties"), dict):
            yield from _leaves(doc, s["additionalProperties"], (*path, {}), depth + 1)


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


def _body_schema(op: dict[str, Any]) -> dict[str, Any] | None:
    return op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")


@pytest.fixture(scope="module")
async def document(offline_api) -> dict[str, Any]:
    return (await offline_api.get("/openapi.json")).json()


async def test_every_input_in_the_document_is_bounded(document):
    unbounded = []
    checked = 0
    for method, path, op in _operations(document):
        inputs = [((p["in"], p["name"]), p["schema"]) for p in op.get("parameters", [])]
        body = _body_schema(op)
        if body is not None:
            inputs.append((("body",), body))
            assert op["requestBody"]["x-max-body-bytes"] > 0, (method, path)
        for where, schema in inputs:
            for leaf, s in _leaves(document, schema):
                checked += 1
                kind = s.get("type")
                if kind == "string" and "enum" not in s and "maxLength" not in s:
                    unbounded.append((method, path, where, leaf, "maxLength"))
                if kind == "array" and "maxItems" not in s:
                    unbounded.append((method, path, where, leaf, "maxItems"))
                if kind == "object" and s.get("additionalProperties", True) is not False:
                    if "maxProperties" not in s:
                        unbounded.append((method, path, where, leaf, "maxProperties"))
    assert checked > 1000
    assert not unbounded, unbounded[:20]


def _body_with(path: tuple, value: Any) -> Any:
    if not path:
        return value
    step, rest = path[0], path[1:]
    if step == []:
        return [_body_with(rest, value)]
    if step == {}:
        return {"k": _body_with(rest, value)}
    return {step: _body_with(rest, value)}


def _url(path: str, long_param: str | None = None) -> str:
    out = path
    for part in [p for p in path.split("/") if p.startswith("{")]:
        name = part.strip("{}")
        out = out.replace(
            part,
            "x" * (bounds.PATH_PARAM_MAX_LENGTH + 1)
            if name == long_param
            else "00000000-0000-7000-8000-000000000000",
        )
    return out


async def test_an_over_long_value_anywhere_is_a_422(api, document):
    """Through a gateway whose identity runs (file routes check the credential before their parameters); the
    other services are not running, so a 422 was decided at the edge."""
    company = await sign_up(api)
    sent = 0
    for method, path, op in _operations(document):
        if method not in ("POST", "PATCH", "PUT", "DELETE", "GET"):
            continue
        body = _body_schema(op)
        cases: list[tuple[str, dict[str, Any], Any, dict[str, str]]] = []
        if body is not None:
            for leaf, s in _leaves(document, body):
                if s.get("type") == "string" and "maxLength" in s and leaf:
                    value = "x" * (s["maxLength"] + 1)
                    cases.append((_url(path), {}, _body_with(leaf, value), {}))
        for p in op.get("parameters", []):
            for s in _variants(document, p["schema"]):
                if s.get("type") == "string" and "maxLength" in s:
                    long = "x" * (s["maxLength"] + 1)
                    if p["in"] == "path":
                        cases.append((_url(path, p["name"]), {}, {} if body else None, {}))
                    elif p["in"] == "query":
                        cases.append((_url(path), {p["name"]: long}, {} if body else None, {}))
                    elif p["in"] == "header":
                        cases.append((_url(path), {}, {} if body else None, {p["name"]: long}))
        form = op.get("requestBody", {}).get("content", {}).get("multipart/form-data", {}).get("schema")
        if form is not None:  # uploads: the form's fields, and the file itself
            cases = [(url, params, None, headers) for url, params, _, headers in cases]
            for name, prop in form["properties"].items():
                if prop.get("type") == "string" and "maxLength" in prop:
                    cases.append((_url(path), {}, {name: "x" * (prop["maxLength"] + 1)}, {}))
        for url, params, json_body, headers in cases:
            headers = {**company.headers, **headers}
            if form is not None:
                answer = await api.request(
                    method,
                    url,
                    params=params,
                    data=json_body or {},
                    files={"file": ("a.csv", b"a,b\n")},
                    headers=headers,
                )
            else:
                answer = await api.request(method, url, params=params, json=json_body, headers=headers)
            sent += 1
            status = answer.status_code
            assert status in (413, 422), (method, url, params, headers, status, answer.text[:300])
            assert_problem(answer, status)
    assert sent > 500


async def test_a_sign_in_with_a_600_kb_email_is_refused_at_the_edge(offline_api):
    # The gateway of `offline_api` has no identity behind it: a 422 here was decided at the edge.
    answer = await offline_api.post(
        "/api/v1/auth/token", json={"email": "a" * 600_000 + "@example.com", "password": "x"}
    )
    problem = assert_problem(answer, 422)
    assert any(e["field"].endswith("email") for e in problem["errors"]), problem


async def test_an_over_long_request_id_is_replaced_not_stored(offline_api):
    long = "r" * (REQUEST_ID_MAX + 1)
    answer = await offline_api.get("/healthz", headers={"X-Request-ID": long})
    assert answer.headers["x-request-id"] != long
    kept = "r" * REQUEST_ID_MAX
    assert (await offline_api.get("/healthz", headers={"X-Request-ID": kept})).headers["x-request-id"] == kept
