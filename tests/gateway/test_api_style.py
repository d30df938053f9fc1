"""docs/api-style.md, enforced: every endpoint of /openapi.json is walked, so a new endpoint that breaks the style
fails here, whatever service it comes from. Each rule names the section of the style it checks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from crm_gateway.app import create_app
from crm_gateway.settings import GatewaySettings

API = "/api/v1"
SEGMENT = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PATH_PARAM = re.compile(r"^(id|[a-z]+(_[a-z]+)*_id|token)$")
ENUM_WORD = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
SCHEMA_NAME = re.compile(r"^[A-Z][A-Za-z]*$")
SERVER_OWNED = {"id", "version", "created_at", "updated_at"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app(GatewaySettings(environment="test")).openapi()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith(API) and path != f"{API}/openapi.json":
                yield path, method.upper(), op


def schema_of(doc: dict[str, Any], node: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(name, schema) of a $ref, or ("", node) for an inline schema."""
    if not node:
        return "", {}
    ref = node.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[1]
        return name, doc["components"]["schemas"][name]
    return "", node


def json_answer(op: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    for code, response in op["responses"].items():
        if code.startswith("2"):
            media = response.get("content", {}).get("application/json")
            return int(code), media["schema"] if media else None
    raise AssertionError(f"{op['operationId']} documents no success")


def request_schema(op: dict[str, Any]) -> dict[str, Any] | None:
    body = op.get("requestBody")
    return (
        body["content"]["application/json"]["schema"]
        if body and "application/json" in body["content"]
        else None
    )


def walk_schemas(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk_schemas(value, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_schemas(value, f"{where}[{i}]")


def getter(doc: dict[str, Any], path: str) -> dict[str, Any] | None:
    return doc["paths"].get(path + "/{id}", {}).get("get")


# ---------------------------------------------------------------- Resources and paths


def test_paths_are_plural_kebab_case_with_id_parameters(doc):
    for path, method, op in operations(doc):
        for part in path.removeprefix(API).strip("/").split("/"):
            if part.startswith("{"):
                assert PATH_PARAM.match(part[1:-1]), f"{method} {path}: path parameter {part} (style: {{id}})"
            else:
                assert SEGMENT.match(part), f"{method} {path}: segment {part!r} is not kebab-case"
        params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        assert params.count("id") <= 1, f"{method} {path}"
        for p in op.get("parameters", []):
            if p["in"] == "path":
                assert p["schema"].get("maxLength") or p["schema"].get("maximum"), (
                    f"{path}: {p['name']} unbounded"
                )


# ---------------------------------------------------------------- Bodies and answers


def test_creates_take_the_object_and_answer_it(doc):
    creates = 0
    for path, method, op in operations(doc):
        if method != "POST" or not op["operationId"].startswith("create_"):
            continue
        if "multipart/form-data" in op.get("requestBody", {}).get("content", {}):
            continue  # an upload: its answer is still the object
        status, answer = json_answer(op)
        if "id" not in schema_of(doc, answer)[1].get("properties", {}):
            continue  # it makes no object of its own (a token pair): not a standard create
        creates += 1
        assert status == 201, f"POST {path}: a create answers 201, not {status}"
        got = getter(doc, path)
        if got is not None:
            assert "Location" in op["responses"]["201"].get("headers", {}), f"POST {path}: no Location"
            assert answer == json_answer(got)[1], f"POST {path} answers another shape than GET {path}/{{id}}"
            name, body = schema_of(doc, request_schema(op))
            # The body is the object's fields, flat: the object's input model or a request of its fields, never
            # a wrapper around the object.
            wrapped = [k for k, v in body.get("properties", {}).items() if answer in v.get("anyOf", [v])]
            assert not wrapped, f"POST {path}: the body wraps the object in {wrapped}"
            assert not SERVER_OWNED & set(body.get("properties", {})), (
                f"POST {path}: server-owned fields in {name}"
            )
    assert creates > 30


def test_updates_take_only_what_may_change_and_answer_the_object(doc):
    patches = 0
    for path, method, op in operations(doc):
        if method != "PATCH":
            continue
        patches += 1
        name, body = schema_of(doc, request_schema(op))
        assert name.endswith("Patch"), f"PATCH {path}: body {name}"
        assert not body.get("required"), f"PATCH {path}: an update requires nothing"
        assert not SERVER_OWNED & set(body["properties"]), f"PATCH {path}: server-owned fields in {name}"
        if path.endswith("{id}"):
            got = doc["paths"][path].get("get")
            if got is not None:
                assert json_answer(op)[1] == json_answer(got)[1], (
                    f"PATCH {path} answers another shape than GET"
                )
        _, answer = schema_of(doc, json_answer(op)[1])
        if path.endswith("{id}") and "version" in answer.get("properties", {}):
            assert "If-Match" in {p["name"] for p in op.get("parameters", [])}, f"PATCH {path}: no If-Match"
    assert patches > 15


def test_read_only_fields_are_never_in_bodies(doc):
    schemas = doc["components"]["schemas"]
    read_only = {
        (name, prop)
        for name, s in schemas.items()
        for prop, p in s.get("properties", {}).items()
        if p.get("readOnly")
    }
    assert read_only, "the document marks no field read-only"
    for name, s in schemas.items():
        base = name.removesuffix("Input").removesuffix("Patch")
        if base != name:
            for prop in s.get("properties", {}):
                assert (base, prop) not in read_only, f"{name}.{prop} is read-only in {base}"


def test_every_answer_field_is_present(doc):
    """No field is optional in an answer: absent values are null (style: Values)."""
    for name, s in doc["components"]["schemas"].items():
        if name.endswith(("Input", "Patch", "Request", "Body")) or name in ("Problem", "FieldIssue"):
            continue
        props = set(s.get("properties", {}))
        assert props <= set(s.get("required", [])), f"{name}: {sorted(props - set(s.get('required', [])))}"


# ---------------------------------------------------------------- Values


def test_enums_are_short_lower_case_words_everywhere(doc):
    found = 0
    for where, node in walk_schemas(doc):
        values = node.get("enum")
        if not isinstance(values, list) or where.endswith(("Problem", "security")):
            continue
        found += 1
        for v in values:
            if v is None:
                continue
            assert isinstance(v, str) and ENUM_WORD.match(v), f"{where}: enum value {v!r}"
            assert "unspecified" not in v, f"{where}: {v}"
    assert found > 20


def test_versions_and_counts_are_numbers_not_strings(doc):
    for where, node in walk_schemas(doc["components"]["schemas"]):
        assert node.get("format") != "int64" or node.get("type") == "integer", where
        assert node.get("pattern") != "^-?[0-9]+$", f"{where}: an integer as a string"
    for name, s in doc["components"]["schemas"].items():
        for prop in ("version", "count"):
            p = s.get("properties", {}).get(prop)
            if p is not None and prop == "version":
                assert p.get("type") == "integer", f"{name}.{prop}"


# ---------------------------------------------------------------- Lists, search and counts


def test_lists_page_with_limit_and_cursor(doc):
    lists = 0
    for path, method, op in operations(doc):
        names = {p["name"] for p in op.get("parameters", [])}
        if method != "GET" or "cursor" not in names:
            continue
        lists += 1
        assert "limit" in names, path
        _, page = schema_of(doc, json_answer(op)[1])
        assert set(page["properties"]) == {"items", "next_cursor"}, (
            f"GET {path}: {sorted(page['properties'])}"
        )
    assert lists > 40
    search = doc["paths"][f"{API}/search"]["get"]
    assert {"cursor", "limit", "q"} <= {p["name"] for p in search["parameters"]}


def test_counts_answer_a_number(doc):
    for path, method, op in operations(doc):
        if method == "GET" and path.endswith("/count"):
            _, answer = schema_of(doc, json_answer(op)[1])
            assert answer["properties"]["count"]["type"] == "integer", path


# ---------------------------------------------------------------- Documentation


def test_every_operation_and_field_is_described_and_named_cleanly(doc):
    for path, method, op in operations(doc):
        assert op.get("summary") and op.get("description"), f"{method} {path}"
        for p in op.get("parameters", []):
            assert p.get("description"), f"{method} {path}: parameter {p['name']}"
    for name, s in doc["components"]["schemas"].items():
        assert SCHEMA_NAME.match(name), f"schema name {name!r}"
        assert not re.search(r"(Input|Update|Patch|Request)(Input|Update|Patch)$", name), name
        assert s.get("description"), f"schema {name}"
        for prop, p in s.get("properties", {}).items():
            assert p.get("description"), f"{name}.{prop} has no description"


# ---------------------------------------------------------------- Errors and headers


def test_errors_are_documented_problems(doc):
    for path, method, op in operations(doc):
        responses = op["responses"]
        for code in ("400", "422", "429", "default"):
            if code == "400" and method == "GET" and not op.get("parameters"):
                continue
            assert code in responses, f"{method} {path}: {code} undocumented"
            assert set(responses[code]["content"]) == {"application/problem+json"}, f"{method} {path} {code}"
        if "{" in path:
            assert "404" in responses, f"{method} {path}: 404 undocumented"
        if method == "POST":
            assert "Idempotency-Key" in {p["name"] for p in op.get("parameters", [])}, f"POST {path}"
        status, answer = json_answer(op)
        _, schema = schema_of(doc, answer)
        if answer and "version" in schema.get("properties", {}):
            assert "ETag" in op["responses"][str(status)].get("headers", {}), f"{method} {path}: no ETag"
