"""A new company starts with the usual roles of a sales team, named in its language, with sensible data
scopes; each is an audited event and an ordinary role its administrator edits or deletes."""

import grpc
from crm.identity.v1 import events_pb2
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.testing import recorded_events

from tests.identity.helpers import invite_and_join, rpc_error, sign_up

ZH = ["系统管理员", "销售经理", "销售代表", "市场专员", "客服专员", "现场工程师"]
EN = ["Administrator", "Sales manager", "Sales rep", "Marketer", "Support agent", "Field engineer"]


def _by_name(roles) -> dict[str, pb.Role]:
    return {r.name: r for r in roles}


def _scope(role: pb.Role, obj: str) -> int:
    return next(p.data_scope for p in role.permissions if p.object == obj)


async def test_a_chinese_company_starts_with_the_usual_roles_in_chinese(identity, identity_service):
    company = await sign_up(identity, "杭州云栖科技有限公司", locale="zh-CN")
    assert company.tenant.locale == "zh-CN"
    roles = (await identity.ListRoles(pb.ListRolesRequest(), metadata=company.md)).items
    assert [r.name for r in roles] == ZH
    by_name = _by_name(roles)
    assert [r.name for r in roles if r.built_in] == ["系统管理员"]
    assert company.admin.role_ids == [by_name["系统管理员"].id]
    manager, rep = by_name["销售经理"], by_name["销售代表"]
    assert _scope(manager, "opportunity") == pb.DATA_SCOPE_DEPARTMENT_TREE
    assert _scope(manager, "account") == pb.DATA_SCOPE_DEPARTMENT_TREE
    assert _scope(rep, "opportunity") == pb.DATA_SCOPE_OWN
    assert _scope(rep, "lead") == pb.DATA_SCOPE_OWN
    assert _scope(rep, "pipeline") == pb.DATA_SCOPE_ALL
    for name in ("市场专员", "客服专员", "现场工程师"):
        role = by_name[name]
        assert {"read"} <= set(next(p.actions for p in role.permissions if p.object == "account"))
        assert _scope(role, "account") == pb.DATA_SCOPE_ALL
        assert _scope(role, "task") == pb.DATA_SCOPE_OWN
    # Each one an event (and so in the audit trail), acted by the company's first user.
    for role in roles:
        created = await recorded_events(identity_service.runtime.db, role.id)
        assert [e.type for e in created] == ["crm.identity.v1.RoleCreated"], role.name
        assert created[0].actor.id == company.admin.id
        payload = events_pb2.RoleCreated()
        created[0].payload.Unpack(payload)
        assert payload.role.name == role.name


async def test_an_english_company_starts_with_them_in_english(identity):
    company = await sign_up(identity, "Acme Ltd", locale="en")
    assert company.tenant.locale == "en"
    roles = (await identity.ListRoles(pb.ListRolesRequest(), metadata=company.md)).items
    assert [r.name for r in roles] == EN
    me = await identity.GetMe(pb.GetMeRequest(), metadata=company.md)
    assert me.tenant.locale == "en"


async def test_the_usual_roles_are_ordinary_roles_the_administrator_edits(identity):
    company = await sign_up(identity)
    rep = _by_name((await identity.ListRoles(pb.ListRolesRequest(), metadata=company.md)).items)["销售代表"]
    user, _ = await invite_and_join(identity, company, role_ids=[rep.id])
    assert list(user.role_ids) == [rep.id]
    changed = (
        await identity.UpdateRole(
            pb.UpdateRoleRequest(
                id=rep.id,
                role=pb.Role(
                    name="客户经理",
                    permissions=[
                        pb.Permission(object="account", actions=["read"], data_scope=pb.DATA_SCOPE_ALL)
                    ],
                ),
                update_mask={"paths": ["name", "permissions"]},
                expected_version=rep.version,
            ),
            metadata=company.md,
        )
    ).role
    assert changed.name == "客户经理" and [p.object for p in changed.permissions] == ["account"]
    marketer = _by_name((await identity.ListRoles(pb.ListRolesRequest(), metadata=company.md)).items)[
        "市场专员"
    ]
    await identity.DeleteRole(pb.DeleteRoleRequest(id=marketer.id), metadata=company.md)
    gone = await rpc_error(identity.GetRole(pb.GetRoleRequest(id=marketer.id), metadata=company.md))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
