"""The one rule of every path that hands out access (a user's roles, an invitation, an API key, a role's
permissions): nobody gives what they do not hold.

- Every object and action the granted roles allow, the caller is allowed too, with a data scope no narrower,
  and no field visible (or writable) that is hidden (or read-only) for the caller. Roles are compared merged,
  the way `crm_kit.policy` merges them when deciding.
- The built-in Administrator role is given or taken only by an administrator.
- Nobody changes their own roles.

The caller's policy is read in the granting transaction, not from the cache, so a change made a moment ago
counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from crm.identity.v1 import identity_pb2
from crm_kit.context import Principal, caller
from crm_kit.errors import PermissionDenied
from crm_kit.policy import PolicyView
from sqlalchemy.ext.asyncio import AsyncSession

from crm_identity.domain.roles import ACTIONS, load_policy

REASON = "grant_exceeds_own_access"


def widening(view: PolicyView, principal: Principal, granted: list[identity_pb2.Role]) -> list[str]:
    """What the granted roles allow beyond the caller's own access (empty: nothing)."""
    grantee_view = PolicyView(identity_pb2.Policy(tenant_id=view.tenant_id, roles=granted))
    grantee = Principal(
        tenant_id=principal.tenant_id,
        actor_id="grantee",
        role_ids=tuple(r.id for r in granted),
        department_id=principal.department_id,
    )
    objects = {p.object for r in granted for p in r.permissions}
    # A wildcard grant reaches every object the caller has rules on too (their hidden fields included).
    objects |= {p.object for rid in principal.role_ids if (r := view.roles.get(rid)) for p in r.permissions}
    problems = []
    for obj in sorted(objects):
        for action in ACTIONS:
            given = grantee_view.decide(grantee, obj, action)
            if not given.allowed:
                continue
            own = view.decide(principal, obj, action)
            what = f"{action} on {obj}"
            if not own.allowed:
                problems.append(f"{what}: you do not have it")
                continue
            if given.scope > own.scope:
                problems.append(f"{what}: a wider data scope than yours")
            if shown := sorted(own.hidden - given.hidden):
                problems.append(f"{what}: fields hidden from you ({', '.join(shown)})")
            if writable := sorted((own.hidden | own.read_only) - (given.hidden | given.read_only)):
                problems.append(f"{what}: fields read-only for you ({', '.join(writable)})")
    return problems


def _is_admin(view: PolicyView, role_ids: Iterable[str]) -> bool:
    return any((r := view.roles.get(rid)) is not None and r.built_in for rid in role_ids)


async def check_grant(
    session: AsyncSession,
    *,
    role_ids: Iterable[str] = (),
    permissions: Iterable[identity_pb2.Permission] = (),
    removed_role_ids: Iterable[str] = (),
) -> None:
    """Refuse (403) if the caller would give roles or permissions wider than their own."""
    role_ids, permissions, removed = list(role_ids), list(permissions), list(removed_role_ids)
    if not role_ids and not permissions and not removed:
        return
    principal = caller()
    view = PolicyView(await load_policy(session, principal.tenant_id))
    caller_is_admin = _is_admin(view, principal.role_ids)
    if not caller_is_admin and _is_admin(view, role_ids + removed):
        raise PermissionDenied(
            "only an administrator gives or takes the Administrator role", reason="administrator_only"
        )
    granted = [view.roles[rid] for rid in role_ids if rid in view.roles]
    if permissions:
        granted.append(identity_pb2.Role(id="granted", permissions=permissions))
    problems = widening(view, principal, granted)
    if problems:
        raise PermissionDenied(
            "you cannot give more access than you have: " + "; ".join(problems[:10]),
            reason=REASON,
            extensions={"problems": problems},
        )
