"""Permissions evaluated in-process by every service: object/action grants, data scopes, field rules.

The access token says who the caller is (tenant, roles, department); the tenant's policy (roles with their
permissions, and the department tree) comes from identity once and is cached, and identity's role and
department events invalidate it, so no request needs a call to identity.

Several roles merge to the most permissive: the widest data scope wins, and a field is hidden (or read-only)
only if every granting role hides it (or restricts it).

Every way out of a service (an answer, a list, a timeline, a PDF, an export, an import report, a merge, a
projection fed by another object's events) goes through one step: `Decision.reveal(principal, message)` (or
`PolicyCache.reveal`) answers None for a record the caller may not read (no permission, or outside the data
scope) and otherwise the message without its hidden fields: top-level ones, parts of nested ones
(`lines.unit_price`), custom fields (`custom_<key>`), and fields derived from a hidden one (`derived`). Text
built from fields (a timeline title from an interaction's subject, an entry copied from a sales event) is a
`Text`, which remembers the field each piece came from, so the same rules apply to it when it is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crm.identity.v1 import identity_pb2
from sqlalchemy import false, or_, select, true
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
CUSTOM = "custom_fields"


def rule_names(field: str) -> set[str]:
    """The names a field rule (from identity: identifiers) may give a field. A custom field
    `custom_fields.<key>` is named `custom_<key>` in rules, or `custom_fields` for all of them; a part of a field
    (`consent.email`, `lines.unit_price`) is covered by a rule on the whole field and by one on its own name
    (a rule names a field at every level of the object: `unit_price` hides the price of every quote line)."""
    if field.startswith(f"{CUSTOM}."):
        key = field.split(".", 1)[1]
        return {field, f"custom_{key}", CUSTOM}
    if "." in field:
        return {field, field.split(".", 1)[0], field.rsplit(".", 1)[1]}
    return {field}


Derived = Mapping[str, Iterable[str]]


@dataclass(frozen=True)
class Text:
    """Text shown to readers that is made of other objects' fields: a leaf is `text` taken from `fields` (none: a
    literal), a node joins its `parts` with `sep`. Rendered for a reader, a leaf from a hidden field is left out
    (and the separator with it), so a title or summary never tells what the fields it came from hide. Stored
    as JSON (`to_json`) beside the text of a projection, so the rules apply when it is read, not when copied."""

    text: str = ""
    fields: tuple[str, ...] = ()
    parts: tuple[Text, ...] = ()
    sep: str = ""

    @classmethod
    def of(cls, text: str, *fields: str) -> Text:
        return cls(text=text or "", fields=tuple(fields))

    @classmethod
    def join(cls, *parts: Text | str, sep: str = "") -> Text:
        return cls(parts=tuple(p if isinstance(p, Text) else cls.of(p) for p in parts), sep=sep)

    def render(self, hidden: Callable[[str], bool] = lambda field: False) -> str:
        if not self.parts:
            return "" if any(hidden(f) for f in self.fields) else self.text
        return self.sep.join(t for t in (p.render(hidden) for p in self.parts) if t)

    @property
    def plain(self) -> str:
        return self.render()

    def to_json(self) -> Any:
        if not self.parts:
            return [self.text, list(self.fields)]
        return {"sep": self.sep, "parts": [p.to_json() for p in self.parts]}

    @classmethod
    def from_json(cls, data: Any) -> Text:
        if isinstance(data, dict):
            return cls(parts=tuple(cls.from_json(p) for p in data.get("parts", ())), sep=data.get("sep", ""))
        text, fields = data
        return cls.of(text, *fields)


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
        return {k: v for k, v in data.items() if not self.is_hidden(k)} if self.hidden else data

    def is_hidden(self, field: str) -> bool:
        """Whether `field` (`name`, `lines.unit_price`, `custom_fields.budget`) is hidden from the caller."""
        return bool(self.hidden) and bool(rule_names(field) & self.hidden)

    def sees(
        self, principal: Principal, owner_id: str, department_id: str, members: Iterable[str] = ()
    ) -> bool:
        """`row_filter` for one record already loaded: whether its owner and department (or its team,
        `members`) put it inside the caller's data scope."""
        if not self.allowed:
            return False
        if self.scope == ALL or owner_id == principal.actor_id or principal.actor_id in members:
            return True
        return self.scope != OWN and bool(self.departments) and department_id in self.departments

    def redact_message(self, message: Any, derived: Derived | None = None) -> Any:
        """Clear the hidden fields of a protobuf message (in place) and return it: top-level fields, fields of
        nested messages (`unit_price` or `lines.unit_price`, in every element of a repeated field), the custom
        fields in a `custom_fields` Struct or map, and each field of `derived` (name → the fields it is computed
        from) when one of its sources is hidden."""
        if not self.hidden:
            return message
        if derived:
            also = {
                k for k, sources in derived.items() if any(self.is_hidden(f) for f in sources)
            } - self.hidden
            if also:
                return dataclasses.replace(self, hidden=self.hidden | also).redact_message(message)
        fields = message.DESCRIPTOR.fields_by_name
        for name, field in fields.items():
            if self.is_hidden(name):
                message.ClearField(name)
            elif field.message_type is not None and name != CUSTOM:
                if field.message_type.GetOptions().map_entry:
                    continue
                # Inside: the same names (a rule names a field at every level), and `name.<part>` as `<part>`.
                prefix = f"{name}."
                inner = frozenset(
                    h.removeprefix(prefix) for h in self.hidden if "." not in h or h.startswith(prefix)
                )
                nested = dataclasses.replace(self, hidden=inner)
                if field.is_repeated:
                    for element in getattr(message, name):
                        nested.redact_message(element)
                elif message.HasField(name):
                    nested.redact_message(getattr(message, name))
        if CUSTOM in fields and not self.is_hidden(CUSTOM):
            values = getattr(message, CUSTOM)
            keys = values.fields if hasattr(values, "fields") else values
            for key in [k for k in keys if self.is_hidden(f"{CUSTOM}.{k}")]:
                del keys[key]
        return message

    def redact_derived(self, message: Any, derived: Derived) -> Any:
        """For a message that is not the object but is computed from it (a board's totals, a forecast's sums):
        clear each field of `derived` (name → the object's fields it is computed from) when one of its sources
        is hidden. Returns the message."""
        for name, sources in derived.items():
            if any(self.is_hidden(f) for f in sources):
                message.ClearField(name)
        return message

    def render(self, text: Text) -> str:
        """A `Text` as this caller may read it."""
        return text.render(self.is_hidden)

    def reveal(
        self, principal: Principal, message: Any, *, derived: Derived | None = None, scoped: bool = True
    ) -> Any | None:
        """The one step on every way out: None when the caller may not read this record (no permission, or its
        `owner_id`/`department_id` outside the data scope; `scoped=False` for records the caller already
        loaded through `row_filter`), else the message without what is hidden from them."""
        if not self.allowed:
            return None
        if scoped and "owner_id" in message.DESCRIPTOR.fields_by_name:
            members = getattr(message, "team_member_ids", ())
            if not self.sees(principal, message.owner_id, message.department_id, members):
                return None
        return self.redact_message(message, derived)

    def redact_sourced(self, values: Mapping[str, str], sources: Mapping[str, Any] | None) -> dict[str, str]:
        """Values a projection copied from this decision's object, as the caller may read them: `sources` names,
        per value, the `Text` (JSON) it was made of or the list of fields it came from. A value whose source
        was not recorded is shown only to a caller from whom nothing of the object is hidden."""
        out = {}
        for key, value in values.items():
            source = (sources or {}).get(key)
            if not self.hidden:
                out[key] = value
            elif source is None:
                out[key] = ""
            elif isinstance(source, list) and all(isinstance(f, str) for f in source):
                out[key] = "" if any(self.is_hidden(f) for f in source) else value
            else:
                out[key] = self.render(Text.from_json(source))
        return out

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

    def source_filter(self, principal: Principal, column: Any, source: Any) -> ColumnElement[bool]:
        """The WHERE clause for records whose scope is that of another record, their source (an approval: its
        quote's or contract's; a payment: its plan's; a merge: its survivor's): `column` holds the id of a row of
        `source` (a model with `id`, `tenant_id`, `owner_id`, `department_id`, maybe `team_member_ids`) that
        `row_filter` lets the caller see, or whose team they are in."""
        if not self.allowed:
            return false()
        scope = self.row_filter(principal, owner_column=source.owner_id, department_column=source.department_id)
        if self.scope != ALL and hasattr(source, "team_member_ids"):
            scope = or_(scope, source.team_member_ids.contains([principal.actor_id]))
        return column.in_(select(source.id).where(source.tenant_id == principal.tenant_id, scope))


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

    async def reveal(
        self,
        principal: Principal,
        obj: str,
        message: Any,
        *,
        action: str = "read",
        derived: Derived | None = None,
    ) -> Any | None:
        """`Decision.reveal` with the caller's decision for `action` on `obj`."""
        return (await self.decide(principal, obj, action)).reveal(principal, message, derived=derived)


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


# The verbs of RPCs that answer records (`Get…`, `List…`, `Search`, `Export…`, `Download…`, PDFs, dry runs...):
# every one of them must go through `reveal`; a service's class test walks `read_methods` of its descriptors,
# so a new read RPC without a case in that test fails it.
READ_VERBS = (
    "Get",
    "List",
    "Search",
    "Export",
    "Download",
    "Count",
    "Check",
    "Find",
    "DryRun",
    "Render",
    "Preview",
)


def read_methods(*services: Any) -> set[str]:
    """`Service/Method` for every read RPC (by `READ_VERBS`) of these service descriptors."""
    return {f"{s.name}/{m.name}" for s in services for m in s.methods if m.name.startswith(READ_VERBS)}


async def authorize(policies: PolicyCache, obj: str, action: str) -> Decision:
    """The caller's decision for `action` on `obj`; a 403 when they may not."""
    return (await policies.decide(caller(), obj, action)).require()
