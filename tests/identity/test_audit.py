import asyncio

import asyncpg
import pytest
from crm.identity.v1 import identity_pb2 as pb

from tests.identity.helpers import rpc_error, sign_up, unique_email


async def wait_for_audit(identity, md, predicate, *, within=10.0, **filters):
    deadline = asyncio.get_running_loop().time() + within
    while True:
        items = (await identity.ListAuditEvents(pb.ListAuditEventsRequest(**filters), metadata=md)).items
        if predicate(items):
            return items
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"audit never matched; last: {items}")
        await asyncio.sleep(0.05)


async def test_sign_ins_and_their_failures_land_in_the_audit_trail(identity):
    company = await sign_up(identity)
    await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=company.admin.email, password="wrong wrong"))
    )
    items = await wait_for_audit(
        identity,
        company.md,
        lambda xs: {"login_succeeded", "login_failed"} <= {x.action for x in xs},
        object_id=company.admin.id,
    )
    failed = next(x for x in items if x.action == "login_failed")
    assert failed.actor.id == company.admin.id and failed.service == "identity"
    assert failed.event_type == "crm.identity.v1.LoginFailed"


async def test_a_permission_change_is_audited_with_before_and_after(identity):
    company = await sign_up(identity)
    role = (
        await identity.CreateRole(
            pb.CreateRoleRequest(name="客服", permissions=[pb.Permission(object="ticket", actions=["read"])]),
            metadata=company.md,
        )
    ).role
    await identity.UpdateRole(
        pb.UpdateRoleRequest(
            id=role.id,
            role=pb.Role(permissions=[pb.Permission(object="ticket", actions=["read", "update"])]),
            update_mask={"paths": ["permissions"]},
        ),
        metadata=company.md,
    )
    items = await wait_for_audit(
        identity, company.md, lambda xs: any(x.action == "updated" for x in xs), object_id=role.id
    )
    change = next(x for x in items if x.action == "updated").changes[0]
    assert change.field == "permissions"
    assert list(change.before.list_value.values[0].struct_value["actions"]) == ["read"]
    assert list(change.after.list_value.values[0].struct_value["actions"]) == ["read", "update"]
    assert all(x.actor.id == company.admin.id for x in items)


async def test_a_company_sees_only_its_own_audit_trail(identity):
    a = await sign_up(identity)
    b = await sign_up(identity, "京东")
    await identity.InviteUser(pb.InviteUserRequest(email=unique_email(), name="x"), metadata=b.md)
    await wait_for_audit(identity, b.md, lambda xs: any(x.action == "invited" for x in xs))
    mine = (
        await identity.ListAuditEvents(pb.ListAuditEventsRequest(page={"limit": 200}), metadata=a.md)
    ).items
    assert mine and all(x.object_id in ("", a.admin.id, a.tenant.id) or x.object_type == "role" for x in mine)
    assert not any(x.action == "invited" for x in mine)


async def test_the_audit_trail_refuses_updates_and_deletes(identity, identity_service, test_infra):
    company = await sign_up(identity)
    await wait_for_audit(identity, company.md, lambda xs: len(xs) > 0)
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(identity_service.settings.database_url))
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit_events SET action = 'x' WHERE tenant_id = $1", company.tenant.id)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_events WHERE tenant_id = $1", company.tenant.id)
    finally:
        await conn.close()
