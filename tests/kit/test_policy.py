import asyncio
import json

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
        # A new company starts with its administrator and the usual roles.
        starting = len((await cache.get(company.tenant.id)).roles)
        assert starting == 6
        assert len((await cache.get(company.tenant.id)).roles) == starting
        assert loads == [company.tenant.id]
        await identity.CreateRole(pb.CreateRoleRequest(name="新角色"), metadata=company.md)
        for _ in range(200):
            if len((await cache.get(company.tenant.id)).roles) == starting + 1:
                break
            await asyncio.sleep(0.02)
        assert len((await cache.get(company.tenant.id)).roles) == starting + 1
        assert len(loads) == 2
    finally:
        await nc.close()


# ---------------------------------------------------------------- the one read step (reveal, redaction, Text)


def hiding(*fields: str, scope=pb.DATA_SCOPE_ALL) -> tuple[PolicyView, Principal]:
    view = PolicyView(
        policy(
            role(
                "r",
                pb.Permission(
                    object="quote",
                    actions=["read"],
                    data_scope=scope,
                    field_rules=[pb.FieldRule(field=f, access=pb.FIELD_ACCESS_HIDDEN) for f in fields],
                ),
            )
        )
    )
    return view, rep("r")


def test_redaction_reaches_nested_fields_custom_fields_and_derived_ones():
    from crm.customers.v1 import customers_pb2 as cpb
    from crm.sales.v1 import quotes_pb2 as qpb
    from google.protobuf import struct_pb2

    view, who = hiding("unit_price", "terms", "custom_budget")
    decision = view.decide(who, "quote", "read")
    quote = qpb.Quote(
        number="Q-1",
        terms="secret",
        total="100",
        list_total="120",
        lines=[qpb.QuoteLine(description="a", unit_price="60", net_amount="50")] * 2,
    )
    decision.redact_message(quote, {"list_total": ("lines.unit_price",), "lines.net_amount": ("unit_price",)})
    assert (quote.number, quote.terms, quote.total, quote.list_total) == ("Q-1", "", "100", "")
    assert [(x.description, x.unit_price, x.net_amount) for x in quote.lines] == [("a", "", "")] * 2
    custom = struct_pb2.Struct()
    custom.update({"budget": "9", "region": "east"})
    account = cpb.Account(name="n", custom_fields=custom)
    decision.redact_message(account)
    assert dict(account.custom_fields) == {"region": "east"}
    nothing_hidden = hiding()[0].decide(who, "quote", "read")
    untouched = qpb.Quote(terms="t", lines=[qpb.QuoteLine(unit_price="1")])
    assert nothing_hidden.redact_message(untouched) == qpb.Quote(
        terms="t", lines=[qpb.QuoteLine(unit_price="1")]
    )


def test_reveal_answers_none_outside_the_permission_or_the_scope():
    from crm.sales.v1 import quotes_pb2 as qpb

    view, who = hiding("terms", scope=pb.DATA_SCOPE_DEPARTMENT_TREE)
    decision = view.decide(who, "quote", "read")
    assert decision.reveal(who, qpb.Quote(owner_id="x", department_id="hr")) is None
    shown = decision.reveal(who, qpb.Quote(owner_id="x", department_id="east", terms="t", number="1"))
    assert shown is not None and (shown.number, shown.terms) == ("1", "")
    assert decision.reveal(who, qpb.Quote(owner_id="u1", department_id="hr")) is not None
    assert view.decide(who, "contract", "read").reveal(who, qpb.Quote(owner_id="u1")) is None
    # `sees` is `row_filter` for one row: the same answer for each kind of row.
    for owner, dept, expected in (("u1", "", True), ("x", "west", True), ("x", "group", False)):
        assert decision.sees(who, owner, dept) is expected


def test_text_drops_the_pieces_whose_source_field_is_hidden_and_survives_json():
    from crm_kit.policy import Text

    money = Text.of("98765.43 CNY", "amount")
    reason = Text.of("原因：价格", "won_reason")
    summary = Text.join(money, reason, sep="；")
    title = Text.join("赢单：", Text.of("ERP", "name"))
    assert (summary.plain, title.plain) == ("98765.43 CNY；原因：价格", "赢单：ERP")
    again = Text.from_json(json.loads(json.dumps(summary.to_json())))
    assert again == summary
    view, who = hiding("amount")
    decision = view.decide(who, "quote", "read")
    assert decision.render(again) == "原因：价格" and decision.render(title) == "赢单：ERP"
    shown = decision.redact_sourced(
        {"summary": summary.plain, "amount": "98765.43", "legacy": "98765.43"},
        {"summary": summary.to_json(), "amount": ["amount"]},
    )
    # A value whose sources were not recorded is shown only when nothing of the object is hidden.
    assert shown == {"summary": "原因：价格", "amount": "", "legacy": ""}
    everything = hiding()[0].decide(who, "quote", "read")
    assert everything.redact_sourced({"legacy": "1"}, None) == {"legacy": "1"}


def test_figures_computed_from_a_hidden_field_are_left_out_but_same_named_fields_are_not():
    from crm.sales.v1 import forecasts_pb2 as fpb

    view, who = hiding("amount", "currency")
    decision = view.decide(who, "quote", "read")
    figures = fpb.ForecastFigures(currency="CNY", open_count=2, pipeline_amount="10", revenue_target="5")
    decision.redact_derived(figures, {"pipeline_amount": ("amount",), "revenue_target": ("target",)})
    # Only the derived field goes: `currency` here is the figure's own, not the object's hidden one.
    assert figures == fpb.ForecastFigures(currency="CNY", open_count=2, revenue_target="5")
