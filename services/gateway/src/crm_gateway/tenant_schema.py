"""The caller's tenant's own OpenAPI document (`GET /api/v1/openapi.json`, authenticated).

The public `/openapi.json` serves every tenant, so an account's or contact's `custom_fields` is an open
object there. This document is the same one with `custom_fields` typed by the tenant's custom field
definitions, read from the customers service with the caller's credential (`ListCustomFields`):

| custom field type | JSON Schema                                                        |
|-------------------|--------------------------------------------------------------------|
| text, long text   | string (`maxLength`, `pattern` when the field sets them)           |
| number            | number (`minimum`, `maximum`)                                      |
| currency          | string, format `decimal` (a decimal string such as "1250.00")     |
| date / datetime   | string, format `date` / `date-time`                                |
| boolean           | boolean                                                            |
| single select     | string, `enum` of the option values                                |
| multi select      | array of that enum, unique items                                   |
| url, email, phone | string, format `uri`, `email`, `phone`                             |

Every schema built from `crm.customers.v1.Account` / `Contact` gets it: answers (Account, AccountPage's items,
AccountWithDuplicates, ...), create bodies (the tenant's required fields listed in `required`; unknown keys
refused, as the service does) and PATCH bodies (every key nullable: `null` removes a value). Labels and help
texts, zh-CN and en, are the properties' `title` and `description`.

Built per tenant and role set (a credential that may read neither accounts nor contacts cannot list the
definitions, and gets the public document) and kept CACHE_SECONDS: a new custom field shows within that time.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
import orjson
from crm.common.v1 import paging_pb2
from crm.customers.v1 import customers_pb2 as cpb
from crm_kit.context import Principal

from crm_gateway import schema

LIST_CUSTOM_FIELDS = "/crm.customers.v1.CustomersService/ListCustomFields"
RECORDS = {
    "crm.customers.v1.Account": cpb.RECORD_TYPE_ACCOUNT,
    "crm.customers.v1.Contact": cpb.RECORD_TYPE_CONTACT,
}
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 1000
T = cpb.CustomFieldType
STRING_FORMATS = {
    T.CUSTOM_FIELD_TYPE_URL: "uri",
    T.CUSTOM_FIELD_TYPE_EMAIL: "email",
    T.CUSTOM_FIELD_TYPE_PHONE: "phone",
    T.CUSTOM_FIELD_TYPE_DATE: "date",
    T.CUSTOM_FIELD_TYPE_DATETIME: "date-time",
}


def _number(text: str) -> float | int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def value_schema(d: cpb.CustomField) -> dict[str, Any]:
    """The JSON Schema of one custom field's value."""
    t = d.type
    out: dict[str, Any]
    options = [o.value for o in d.options]
    if t in (T.CUSTOM_FIELD_TYPE_TEXT, T.CUSTOM_FIELD_TYPE_LONG_TEXT):
        out = {"type": "string"}
        if d.max_length:
            out["maxLength"] = d.max_length
    elif t == T.CUSTOM_FIELD_TYPE_NUMBER:
        out = {"type": "number"}
        for key, bound in (("minimum", d.min), ("maximum", d.max)):
            if bound and (n := _number(bound)) is not None:
                out[key] = n
    elif t == T.CUSTOM_FIELD_TYPE_CURRENCY:
        out = {"type": "string", "format": "decimal", "pattern": r"^-?[0-9]+(\.[0-9]{1,4})?$"}
        for key, bound in (("x-minimum", d.min), ("x-maximum", d.max)):  # decimal strings, as the values
            if bound:
                out[key] = bound
    elif t == T.CUSTOM_FIELD_TYPE_BOOLEAN:
        out = {"type": "boolean"}
    elif t == T.CUSTOM_FIELD_TYPE_SINGLE_SELECT:
        out = {"type": "string", "enum": options}
    elif t == T.CUSTOM_FIELD_TYPE_MULTI_SELECT:
        out = {"type": "array", "items": {"type": "string", "enum": options}, "uniqueItems": True}
    elif t in STRING_FORMATS:
        out = {"type": "string", "format": STRING_FORMATS[t]}
    else:  # a type this gateway does not know yet: any value
        out = {}
    if d.pattern and out.get("type") == "string" and "enum" not in out:
        out["pattern"] = f"^(?:{d.pattern})$"  # the service matches the whole value
    out["title"] = d.label_en or d.label_zh or d.key
    notes = [n for n in (d.label_zh, d.help_zh, d.help_en) if n and n != out["title"]]
    if notes:
        out["description"] = " · ".join(notes)
    out["x-label-zh"], out["x-label-en"] = d.label_zh, d.label_en
    return out


def custom_fields_schema(defs: list[cpb.CustomField], kind: str) -> dict[str, Any]:
    """`custom_fields` for `kind`: "output" (answers), "input" (create bodies) or "update" (PATCH bodies)."""
    properties = {}
    for d in defs:  # in the order the service lists them (position, then creation)
        value = value_schema(d)
        properties[d.key] = {"anyOf": [value, {"type": "null"}]} if kind == "update" else value
    out: dict[str, Any] = {
        "type": "object",
        "title": "Custom Fields",
        "description": "The tenant's custom fields (GET /api/v1/custom-fields describes them).",
        "properties": properties,
    }
    if kind != "output":
        out["additionalProperties"] = False
    required = [d.key for d in defs if d.required]
    if kind == "input" and required:
        out["required"] = sorted(required)
    if kind != "output":
        return {"anyOf": [out, {"type": "null"}], "title": "Custom Fields"}
    return out


def tenant_document(
    base: dict[str, Any], defs: dict[int, list[cpb.CustomField]], principal: Principal
) -> dict[str, Any]:
    """`base` (the public document, not changed) with the custom fields of `defs` (by record type) typed."""
    doc = dict(base)
    doc["info"] = {
        **base.get("info", {}),
        "x-tenant-id": principal.tenant_id,
        "description": base.get("info", {}).get("description", "")
        + "\n\nThis document is the caller's tenant's: `custom_fields` of accounts and contacts are typed by "
        "its custom field definitions.",
    }
    components = dict(base.get("components", {}))
    schemas = dict(components.get("schemas", {}))
    for name, full_name, kind in schema.REGISTRY.models_of(set(RECORDS)):
        current = schemas.get(name)
        if current is None or "custom_fields" not in current.get("properties", {}):
            continue
        changed = copy.deepcopy(current)
        changed["properties"]["custom_fields"] = custom_fields_schema(
            defs.get(RECORDS[full_name], []), "update" if kind == "patch" else kind
        )
        schemas[name] = changed
    components["schemas"] = schemas
    doc["components"] = components
    return doc


class TenantDocuments:
    """Builds and caches the tenant documents; `gateway` makes the calls (see runtime.Gateway.call)."""

    def __init__(self, gateway: Any, base: Callable[[], dict[str, Any]], *, ttl: float = CACHE_SECONDS):
        self.gateway = gateway
        self.base = base
        self.ttl = ttl
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], tuple[float, bytes]] = OrderedDict()

    async def document(self, principal: Principal) -> bytes:
        key = (principal.tenant_id, tuple(sorted(principal.role_ids)))
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        defs = await self._definitions()
        body = orjson.dumps(self.base() if defs is None else tenant_document(self.base(), defs, principal))
        self._cache[key] = (now + self.ttl, body)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return body

    async def _definitions(self) -> dict[int, list[cpb.CustomField]] | None:
        """The tenant's definitions by record type; None when the caller may not list them (or no customers
        service is routed): the document then stays the public one."""
        out: dict[int, list[cpb.CustomField]] = {}
        if not self.gateway.routes(LIST_CUSTOM_FIELDS):
            return None
        cursor = ""
        while True:
            request = cpb.ListCustomFieldsRequest(page=paging_pb2.PageRequest(limit=200, cursor=cursor))
            try:
                answer = await self.gateway.call(LIST_CUSTOM_FIELDS, request)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:  # may read neither accounts nor contacts
                    return None
                raise
            for d in answer.items:
                out.setdefault(d.record_type, []).append(d)
            cursor = answer.next_cursor
            if not cursor:
                return out
