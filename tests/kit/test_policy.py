import asyncio

import nats
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.context import Principal
from crm_kit.policy import PolicyCache, PolicyView, follow_policy_events
from sqlalchemy import column

from tests.identity.helpers import sign_up


def policy(*roles: pb.Role) -> pb.Policy:
    depts = [
        pb.Department(id="group"),
        pb.Department(id="sales", parent_id="group"),
        pb.Department(id="east", parent_id="sales"),
        pb.Department(id="west", parent_id="sales"),
        pb.Department(id="hr", parent_id="group"),
    ]
    return pb.Policy(tenant_id="t1", roles=list(roles), departments=depts)


def role(rid: str, *perms: pb.Permission) -> pb.Role:
    return pb.Role(id=rid, permissions=list(perms))


def rep(*role_ids: str, dept: str = "sales") -> Principal:
    return Principal(tenant_id="t1", actor_id="u1", role_ids=role_ids, department_id=dept)


def test_no_grant_means_denied():
    view = PolicyView(policy(role("r", pb.Permission(object="account", actions=["read"]))))
    assert not view.decide(rep("r"), "account", "delete").allowed
    assert not view.decide(rep("other"), "account", "read").allowed
    assert view.decide(rep("r"), "account", "read").allowed


def test_the_widest_scope_of_several_roles_wins_and_department_tree_includes_descendants():
    own = role("own", pb.Permission(object="account", actions=["read"], data_scope=pb.DATA_SCOPE_OWN))
    tree = role(
        "tree", pb.Permission(object="account", actions=["read"], data_scope=pb.DATA_SCOPE_DEPARTMENT_TREE)
    )
    view = PolicyView(policy(own, tree))
    decision = view.decide(rep("own", "tree"), "account", "read")
    assert decision.scope == pb.DATA_SCOPE_DEPARTMENT_TREE
    assert decision.departments == {"sales", "east", "west"}
    dept_only = PolicyView(
        policy(
            role("d", pb.Permission(object="account", actions=["read"], data_scope=pb.DATA_SCOPE_DEPARTMENT))
        )
    )
    assert dept_only.decide(rep("d"), "account", "read").departments == {"sales"}


def test_a_field_is_hidden_only_when_every_granting_role_hides_it():
    hides = role(
        "a",
        pb.Permission(
            object="account",
            actions=["read"],
            field_rules=[
                pb.FieldRule(field="revenue", access=pb.FIELD_ACCESS_HIDDEN),
                pb.FieldRule(field="phone", access=pb.FIELD_ACCESS_HIDDEN),
            ],
        ),
    )
    read_only = role(
        "b",
        pb.Permission(
            object="account",
            actions=["read"],
            field_rules=[pb.FieldRule(field="revenue", access=pb.FIELD_ACCESS_READ_ONLY)],
        ),
    )
    view = PolicyView(policy(hides, read_only))
    assert view.decide(rep("a"), "account", "read").hidden == {"revenue", "phone"}
    both = view.decide(rep("a", "b"), "account", "read")
    assert both.hidden == frozenset()
    assert both.read_only == {"revenue"}


def test_row_filter_follows_the_scope():
    owner, dept = column("owner_id"), column("department_id")
    view = PolicyView(
        policy(
            role("all", pb.Permission(object="*", actions=["*"], data_scope=pb.DATA_SCOPE_ALL)),
            role("own", pb.Permission(object="lead", actions=["read"], data_scope=pb.DATA_SCOPE_OWN)),
            role(
                "tree",
                pb.Permission(object="lead", actions=["read"], data_scope=pb.DATA_SCOPE_DEPARTMENT_TREE),
            ),
        )
    )

    def sql(decision):
        clause = decision.row_filter(rep(), owner_column=owner, department_column=dept)
        return str(clause.compile(compile_kwargs={"literal_binds": True}))

    assert sql(view.decide(rep("all"), "lead", "read")) == "true"
    assert sql(view.decide(rep("own"), "lead", "read")) == "owner_id = 'u1'"
    assert (
        sql(view.decide(rep("tree"), "lead", "read"))
        == "owner_id = 'u1' OR department_id IN ('east', 'sales', 'west')"
    )


async def test_a_role_change_reaches_every_replicas_cache_through_events(
    identity, test_infra, test_infra_namespace
):
    company = await sign_up(identity)
    loads = []

    async def loader(tenant_id):
        loads.append(tenant_id)
        return (await identity.GetPolicy(pb.GetPolicyRequest(), metadata=company.md)).policy

    nc = await nats.connect(test_infra.nats_url)
    try:
        cache = PolicyCache(loader, ttl_seconds=3600)
        await follow_policy_events(cache, nc, test_infra_namespace)
        assert len((await cache.get(company.tenant.id)).roles) == 1
        assert len((await cache.get(company.tenant.id)).roles) == 1
        assert loads == [company.tenant.id]
        await identity.CreateRole(pb.CreateRoleRequest(name="新角色"), metadata=company.md)
        for _ in range(200):
            if len((await cache.get(company.tenant.id)).roles) == 2:
                break
            await asyncio.sleep(0.02)
        assert len((await cache.get(company.tenant.id)).roles) == 2
        assert len(loads) == 2
    finally:
        await nc.close()
