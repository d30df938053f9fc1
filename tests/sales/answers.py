"""Every gateway answer the sales tests receive is checked against its own schema in /openapi.json.

`check_answers(client)` adds a response hook to the tests' HTTP client: a JSON answer (success or problem)
must validate against the schema the document declares for its operation and status, so a shape the
document does not describe fails the test that met it, whatever that test asserts itself.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC = "urn:crm:openapi"


class AnswerChecker:
    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.registry = Registry().with_resource(
            DOC, Resource.from_contents(doc, default_specification=DRAFT202012)
        )
        self.routes: list[tuple[re.Pattern[str], str, dict[str, Any]]] = []
        for path, ops in doc["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[^}/]+\}", "[^/]+", path) + "$")
            for method, op in ops.items():
                self.routes.append((pattern, method.upper(), op))
        # Literal paths before templated ones (`/leads/count` before `/leads/{id}`).
        self.routes.sort(key=lambda r: r[0].pattern.count("[^/]+"))
        self.checked = 0
        self.validators: dict[int, jsonschema.Draft202012Validator] = {}

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for pattern, verb, op in self.routes:
            if verb == method and pattern.match(path):
                return op
        return None

    def check(self, response: httpx.Response) -> None:
        request = response.request
        op = self.operation(request.method, request.url.path)
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if op is None or ctype not in ("application/json", "application/problem+json"):
            return
        declared = op["responses"].get(str(response.status_code)) or op["responses"].get("default")
        assert declared is not None, (
            f"{request.method} {request.url.path} answered {response.status_code}, not in the document"
        )
        content = declared.get("content", {}).get(ctype)
        assert content is not None, (
            f"{request.method} {request.url.path} {response.status_code}: {ctype} undeclared"
        )
        key = id(content)
        validator = self.validators.get(key)
        if validator is None:
            validator = jsonschema.Draft202012Validator(_rebase(content["schema"]), registry=self.registry)
            self.validators[key] = validator
        try:
            validator.validate(json.loads(response.content))
        except jsonschema.ValidationError as exc:
            raise AssertionError(
                f"{request.method} {request.url.path} {response.status_code} breaks its schema: {exc.message} "
                f"at {list(exc.absolute_path)}\n{response.text[:2000]}"
            ) from None
        self.checked += 1


def _rebase(schema: Any) -> Any:
    """The operation's schema with its `#/components/...` references pointed at the document."""
    if isinstance(schema, dict):
        return {k: (DOC + v if k == "$ref" and v.startswith("#") else _rebase(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


def check_answers(client: httpx.AsyncClient) -> AnswerChecker:
    checker = AnswerChecker(client.app.openapi())  # type: ignore[attr-defined]

    async def hook(response: httpx.Response) -> None:
        await response.aread()
        checker.check(response)

    client.event_hooks["response"].append(hook)
    return checker
