"""Permissions evaluated in-process by every service: object/action grants, data scopes, field rules.

The access token says who the caller is (tenant, roles, department); the tenant's policy (roles with their
permissions, and the department tree) comes from identity once and is cached, and identity's role and
department events invalidate it, so no request needs a call to identity.

Several roles merge to the most permissive: the widest data scope wins, and a field is hidden (or read-only)
only if every granting role hides it (or restricts it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from crm.identity.v1 import identity_pb2
from sqlalchemy import false, or_, true
from sqlalchemy.sql import ColumnElement

from crm_kit.context import Principal, caller
from crm_kit.errors import PermissionDenied

OWN = identity_pb2.DATA_SCOPE_OWN
DEPARTMENT = identity_pb2.DATA_SCOPE_DEPARTMENT
DEPARTMENT_TREE = identity_pb2.DATA_SCOPE_DEPARTMENT_TREE
ALL = identity_pb2.DATA_SCOPE_ALL
HIDDEN = identity_pb2.FIELD_ACCESS_HIDDEN
READ_ONLY = identity_pb2.FIELD_ACCESS_READ_ONLY

ANY = "*"


@dataclass(frozen=True)
class Decision:
    object: str
    action: str
    allowed: bool
    scope: int = identity_pb2.DATA_SCOPE_UNSPECIFIED
    hidden: frozenset[str] = frozenset()
    read_only: frozenset[str] = frozenset()
    # Departments whose records the caller sees (None: all of them).
    departments: frozenset[str] | None = None

    def require(self) -> Decision:
        if not self.allowed:
            raise PermissionDenied(f"not allowed to {self.action} {self.object}", reason="permission_denied")
        return self

    def check_writable(self, fields: Iterable[str]) -> None:
        blocked = sorted(f for f in fields if f in self.read_only or f in self.hidden)
        if blocked:
            raise PermissionDenied(
                f"fields are read-only for you: {', '.join(blocked)}", reason="field_read_only"
            )

    def redact(self, data: dict) -> dict:
        return {k: v for k, v in data.items() if k not in self.hidden} if self.hidden else data

    def redact_message(self, message: Any) -> Any:
        """Clear the hidden fields of a protobuf message (in place) and return it."""
        for name in self.hidden:
            if name in message.DESCRIPTOR.fields_by_name:
                message.ClearField(name)
        return message

    def row_filter(self, principal: Principal, *, owner_column, department_column) -> ColumnElement[bool]:  # type: ignore[no-untyped-def]
        """The WHERE clause for the records this caller may see."""
        if not self.allowed:
            return false()
        if self.scope == ALL:
            return true()
        own = owner_column == principal.actor_id
        if self.scope == OWN or not self.departments:
            return own
        return or_(own, department_column.in_(sorted(self.departments)))


class PolicyView:
    """One tenant's policy, indexed for fast decisions."""

    def __init__(self, policy: identity_pb2.Policy):
        self.tenant_id = policy.tenant_id
        self.roles = {r.id: r for r in policy.roles}
        self.departments = frozenset(d.id for d in policy.departments)
        self.children: dict[str, list[str]] = {}
        for d in policy.departments:
            self.children.setdefault(d.parent_id, []).append(d.id)
        self._cache: dict[tuple[tuple[str, ...], str, str, str], Decision] = {}

    def subtree(self, department_id: str) -> frozenset[str]:
        seen, stack = set(), [department_id]
        while stack:
            d = stack.pop()
            if d and d not in seen:
                seen.add(d)
                stack.extend(self.children.get(d, ()))
        return frozenset(seen)

    def decide(self, principal: Principal, obj: str, action: str) -> Decision:
        key = (principal.role_ids, principal.department_id, obj, action)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._decide(principal, obj, action)
        return cached

    def _decide(self, principal: Principal, obj: str, action: str) -> Decision:
        grants = [
            p
            for rid in principal.role_ids
            if (role := self.roles.get(rid)) is not None
            for p in role.permissions
            if p.object in (obj, ANY) and (action in p.actions or ANY in p.actions)
        ]
        if not grants:
            return Decision(obj, action, allowed=False)
        scope = max(p.data_scope or OWN for p in grants)
        hidden = frozenset.intersection(
            *(frozenset(r.field for r in p.field_rules if r.access == HIDDEN) for p in grants)
        )
        restricted = frozenset.intersection(
            *(frozenset(r.field for r in p.field_rules if r.access in (HIDDEN, READ_ONLY)) for p in grants)
        )
        departments = None
        if scope == DEPARTMENT:
            departments = frozenset({principal.department_id} - {""})
        elif scope == DEPARTMENT_TREE:
            departments = self.subtree(principal.department_id)
        elif scope == OWN:
            departments = frozenset()
        return Decision(obj, action, True, scope, hidden, restricted - hidden, departments)

    def effective_permissions(self, principal: Principal) -> list[identity_pb2.Permission]:
        """Every role of the caller merged per object: what /me shows."""
        merged: dict[str, identity_pb2.Permission] = {}
        for rid in principal.role_ids:
            role = self.roles.get(rid)
            for p in role.permissions if role else ():
                m = merged.setdefault(p.object, identity_pb2.Permission(object=p.object))
                m.actions.extend(a for a in p.actions if a not in m.actions)
                m.data_scope = max(m.data_scope, p.data_scope)
        return [merged[k] for k in sorted(merged)]


PolicyLoader = Callable[[str], Awaitable[identity_pb2.Policy]]


class PolicyCache:
    """Tenant policies kept in memory; `invalidate` on identity's role/department events, and a TTL as a
    safety net should an event be missed."""

    def __init__(self, loader: PolicyLoader, *, ttl_seconds: float = 300):
        self.loader = loader
        self.ttl = ttl_seconds
        self._views: dict[str, tuple[float, PolicyView]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, tenant_id: str) -> PolicyView:
        entry = self._views.get(tenant_id)
        if entry and time.monotonic() - entry[0] < self.ttl:
            return entry[1]
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            entry = self._views.get(tenant_id)
            if entry and time.monotonic() - entry[0] < self.ttl:
                return entry[1]
            view = PolicyView(await self.loader(tenant_id))
            self._views[tenant_id] = (time.monotonic(), view)
            return view

    def invalidate(self, tenant_id: str) -> None:
        self._views.pop(tenant_id, None)

    async def decide(self, principal: Principal, obj: str, action: str) -> Decision:
        return (await self.get(principal.tenant_id)).decide(principal, obj, action)


POLICY_EVENTS = frozenset(
    f"crm.identity.v1.{name}"
    for name in (
        "RoleCreated",
        "RoleUpdated",
        "RoleDeleted",
        "DepartmentCreated",
        "DepartmentUpdated",
        "DepartmentDeleted",
    )
)


async def follow_policy_events(cache: PolicyCache, nc: Any, namespace: str = "") -> Any:
    """Invalidate a tenant's cached policy as soon as identity publishes a role or department change, on every
    replica (`crm_kit.events.follow`). Returns the subscription."""
    from crm_kit.events.follow import follow

    def on_event(envelope: Any) -> None:
        if envelope.type in POLICY_EVENTS:
            cache.invalidate(envelope.tenant_id)

    return await follow(nc, "crm.identity.v1.>", on_event, namespace)


async def authorize(policies: PolicyCache, obj: str, action: str) -> Decision:
    """The caller's decision for `action` on `obj`; a 403 when they may not."""
    return (await policies.decide(caller(), obj, action)).require()
