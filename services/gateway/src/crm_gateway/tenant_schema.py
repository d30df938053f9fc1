"""The caller's tenant's own OpenAPI document (`GET /api/v1/openapi.json`, authenticated).

The public `/openapi.json` serves every tenant, so an account's or contact's `custom_fields` is an open
object there. This document is the same one with `custom_fields` typed by the tenant's custom fields. The
gateway knows nothing of custom field types: the customers service, which owns custom fields and checks their
values, states them as JSON Schema (`GetCustomFieldSchemas`, called with the caller's credential), and this
module only splices those schemas into every schema built from `crm.customers.v1.Account` / `Contact`:
answers (Account, AccountPage's items, ...), create bodies (AccountInput: `custom_fields` becomes required
when the tenant has required custom fields) and PATCH bodies (AccountPatch).

Built per tenant and role set (a credential that may read neither accounts nor contacts cannot get the schemas,
and gets the public document) and kept CACHE_SECONDS: a new custom field shows within that time.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
import orjson
from crm.customers.v1 import customers_pb2 as cpb
from crm_kit import grpc_client
from crm_kit.context import Principal

from crm_gateway import schema

SERVICE = "customers"
GET_SCHEMAS = "/crm.customers.v1.CustomersService/GetCustomFieldSchemas"
# Any routed RPC of the customers service: whether this gateway has one at all.
CUSTOMERS_ROUTE = "/crm.customers.v1.CustomersService/ListCustomFields"
RECORDS = {
    "crm.customers.v1.Account": cpb.RECORD_TYPE_ACCOUNT,
    "crm.customers.v1.Contact": cpb.RECORD_TYPE_CONTACT,
}
# The kind of a model (crm_gateway.schema) -> the field of CustomFieldSchema holding its schema.
KINDS = {schema.OUTPUT: "output", schema.INPUT: "create", schema.PATCH: "update"}
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 1000

Schemas = dict[tuple[int, str], dict[str, Any]]  # (record type, kind) -> the `custom_fields` object schema


def _nullable(prop: dict[str, Any]) -> bool:
    return {"type": "null"} in prop.get("anyOf", ())


def tenant_document(base: dict[str, Any], schemas: Schemas, principal: Principal) -> dict[str, Any]:
    """`base` (the public document, not changed) with `custom_fields` replaced by the tenant's schemas."""
    doc = dict(base)
    doc["info"] = {
        **base.get("info", {}),
        "x-tenant-id": principal.tenant_id,
        "description": base.get("info", {}).get("description", "")
        + "\n\nThis document is the caller's tenant's: `custom_fields` of accounts and contacts are typed by "
        "its custom field definitions.",
    }
    components = dict(base.get("components", {}))
    models = dict(components.get("schemas", {}))
    for name, full_name, mode in schema.REGISTRY.models_of(set(RECORDS)):
        current = models.get(name)
        typed = schemas.get((RECORDS[full_name], KINDS.get(mode, "")))
        if typed is None or current is None or "custom_fields" not in current.get("properties", {}):
            continue
        changed = copy.deepcopy(current)
        prop: dict[str, Any] = typed
        if "required" in typed:  # a create must bring the tenant's required fields: the object itself too
            changed["required"] = sorted({*changed.get("required", ()), "custom_fields"})
        elif _nullable(current["properties"]["custom_fields"]):
            prop = {"anyOf": [typed, {"type": "null"}], "title": typed.get("title", "Custom Fields")}
        changed["properties"]["custom_fields"] = prop
        models[name] = changed
    components["schemas"] = models
    doc["components"] = components
    return doc


class TenantDocuments:
    """Builds and caches the tenant documents; `gateway` is the runtime.Gateway (its customers channel)."""

    def __init__(self, gateway: Any, base: Callable[[], dict[str, Any]], *, ttl: float = CACHE_SECONDS):
        self.gateway = gateway
        self.base = base
        self.ttl = ttl
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], tuple[float, bytes]] = OrderedDict()
        self._stub: Any = None

    async def document(self, principal: Principal) -> bytes:
        key = (principal.tenant_id, tuple(sorted(principal.role_ids)))
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        schemas = await self._schemas()
        body = orjson.dumps(
            self.base() if schemas is None else tenant_document(self.base(), schemas, principal)
        )
        self._cache[key] = (now + self.ttl, body)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return body

    async def _schemas(self) -> Schemas | None:
        """The tenant's `custom_fields` schemas; None when the caller may not have them (or no customers
        service is routed): the document then stays the public one."""
        if not self.gateway.routes(CUSTOMERS_ROUTE):
            return None
        if self._stub is None:
            self._stub = self.gateway.channel_for(SERVICE).unary_unary(
                GET_SCHEMAS,
                request_serializer=cpb.GetCustomFieldSchemasRequest.SerializeToString,
                response_deserializer=cpb.GetCustomFieldSchemasResponse.FromString,
            )
        try:
            answer = await self._stub(
                cpb.GetCustomFieldSchemasRequest(),
                timeout=self.gateway.timeout,
                metadata=grpc_client.outgoing_metadata(),
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:  # may read neither accounts nor contacts
                return None
            raise
        out: Schemas = {}
        for s in answer.schemas:
            for kind in KINDS.values():
                out[(s.record_type, kind)] = orjson.loads(getattr(s, kind))
        return out
