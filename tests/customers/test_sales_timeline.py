"""Sales activity on the account's timeline: the real sales service's events reach customers' consumer, which
adds one entry per relevant event (zh/en title, a link to the sales object), once however often an event is
delivered; the timeline shows them beside interactions to whoever may see both the account and the deal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from crm.common.v1 import event_pb2
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import data_quality_pb2 as dq
from crm.sales.v1 import contracts_pb2, events_pb2, quotes_pb2
from crm_customers.domain import sales_timeline
from crm_customers.models import TimelineEntry
from crm_kit.events.consumer import unpack_payload
from crm_kit.events.outbox import build_envelope
from sqlalchemy import select

from tests.customers.helpers import new_account, sign_up
from tests.customers.test_gateway_customers import create_account, member
from tests.customers.test_merge import data  # noqa: F401
from tests.gateway.conftest import gateway_settings, running_gateway
from tests.gateway.conftest import sign_up as sign_up_http


@pytest.fixture(scope="module")
async def sales_for_timeline(test_infra, identity_service, customers_service):
    """The real sales service, in front of the customers service of this area."""
    from crm_kit.testing import running_service
    from crm_sales.app import SPEC
    from crm_sales.settings import SalesSettings

    settings = await test_infra.service_settings(
        SalesSettings,
        "timeline_sales",
        identity_service_addr=identity_service.address,
        customers_service_addr=customers_service.address,
        reclaim_interval_seconds=0,
        # Its own durable consumer of new tenants: the run's sales service (its own database) has the default.
        tenant_setup_consumer="sales-tenant-setup-timeline-tests",
    )
    async with running_service(SPEC, settings) as service:
        yield service


@pytest.fixture(scope="module")
async def api(
    test_infra, identity_service, customers_service, sales_for_timeline
) -> AsyncIterator[httpx.AsyncClient]:
    settings = gateway_settings(
        test_infra,
        identity_service.address,
        customers_service_addr=customers_service.address,
        sales_service_addr=sales_for_timeline.address,
    )
    async with running_gateway(settings) as client:
        yield client


async def timeline(api, account_id, headers, **params) -> list[dict]:
    r = await api.get(f"/api/v1/accounts/{account_id}/timeline", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def until(api, account_id, headers, kinds: set[str]) -> list[dict]:
    """The timeline once entries of all these kinds arrived (events travel through NATS)."""
    for _ in range(200):
        items = await timeline(api, account_id, headers)
        if kinds <= {i["kind"] for i in items}:
            return items
        await asyncio.sleep(0.05)
    raise AssertionError(f"timeline never showed {kinds}: {items}")


async def test_won_deals_reach_the_account_timeline_through_the_api(api):
    company = await sign_up_http(api)
    h = company.headers
    account = await create_account(api, h, name="华为技术有限公司")
    pipeline = (await api.post("/api/v1/pipelines", json={"name": "大客户"}, headers=h)).json()
    won_stage = next(s for s in pipeline["stages"] if s["kind"] == "won")
    opp = await api.post(
        "/api/v1/opportunities",
        json={
            "name": "ERP 升级",
            "pipeline_id": pipeline["id"],
            "account_id": account["id"],
            "amount": "1250000.00",
            "currency": "CNY",
            "close_date": "2027-03-31",
        },
        headers=h,
    )
    assert opp.status_code == 201, opp.text
    visit = await api.post(
        "/api/v1/interactions",
        json={
            "kind": "visit",
            "subject": "上门拜访",
            "account_ids": [account["id"]],
        },
        headers=h,
    )
    assert visit.status_code == 201, visit.text
    won = await api.post(
        f"/api/v1/opportunities/{opp.json()['id']}/stage",
        json={"stage_id": won_stage["id"], "won_reason": "价格与服务"},
        headers=h,
    )
    assert won.status_code == 200, won.text

    items = await until(api, account["id"], h, {"sales.opportunity_created", "sales.opportunity_won"})
    # Newest first, interactions and sales entries in one list.
    assert [i["kind"] for i in items] == [
        "sales.opportunity_won",
        "interaction.visit",
        "sales.opportunity_created",
    ]
    won_item = items[0]
    assert won_item["title"] == "赢单：ERP 升级"
    assert won_item["summary"] == "1250000.00 CNY；原因：价格与服务"
    event = won_item["sales_event"]
    assert (event["link_type"], event["link_id"]) == ("opportunity", opp.json()["id"])
    assert event["event_type"] == "crm.sales.v1.OpportunityWon" and event["amount"] == "1250000.00"
    english = await timeline(api, account["id"], h, locale="en")
    assert [i["title"] for i in english] == [
        "Opportunity won: ERP 升级",
        "Visit: 上门拜访",
        "New opportunity: ERP 升级",
    ]
    assert english[2]["summary"] == "1250000.00 CNY, expected to close 2027-03-31"
    # One keyset over both kinds: pages of one.
    seen, cursor = [], None
    for _ in range(4):
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = await api.get(f"/api/v1/accounts/{account['id']}/timeline", params=params, headers=h)
        seen.extend(i["id"] for i in page.json()["items"])
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    assert seen == [i["id"] for i in items]

    # Who may read the account but neither interactions nor opportunities sees nothing of either; with
    # interactions, the visit only; an own-scope reader of opportunities does not see the admin's deal either.
    nothing = await member(api, company, [{"object": "account", "actions": ["read"], "data_scope": "all"}])
    assert await timeline(api, account["id"], nothing) == []
    visits = {"object": "interaction", "actions": ["read"], "data_scope": "all"}
    no_deals = await member(
        api, company, [{"object": "account", "actions": ["read"], "data_scope": "all"}, visits]
    )
    assert [i["kind"] for i in await timeline(api, account["id"], no_deals)] == ["interaction.visit"]
    own_deals = await member(
        api,
        company,
        [
            {"object": "account", "actions": ["read"], "data_scope": "all"},
            {"object": "opportunity", "actions": ["read"], "data_scope": "own"},
            visits,
        ],
    )
    assert [i["kind"] for i in await timeline(api, account["id"], own_deals)] == ["interaction.visit"]
    all_deals = await member(
        api,
        company,
        [
            {"object": "account", "actions": ["read"], "data_scope": "all"},
            {"object": "opportunity", "actions": ["read"], "data_scope": "all"},
            visits,
        ],
    )
    assert len(await timeline(api, account["id"], all_deals)) == 3


def envelope(payload, tenant_id: str) -> event_pb2.EventEnvelope:
    return build_envelope(
        payload,
        aggregate_type="sales",
        aggregate_id="x",
        action="test",
        tenant_id=tenant_id,
        actor=event_pb2.Actor(type=event_pb2.ACTOR_TYPE_SYSTEM, id="sales"),
    )


async def deliver(service, env: event_pb2.EventEnvelope) -> None:
    """What the consumer does with one delivery, without the kit's inbox (as after the inbox forgot it)."""
    async with service.runtime.db.unit_of_work() as uow:
        await sales_timeline.record(uow, env, unpack_payload(env))


async def entries(service, account_id: str) -> list[TimelineEntry]:
    async with service.runtime.db.read() as session:
        return list(
            (
                await session.scalars(
                    select(TimelineEntry)
                    .where(TimelineEntry.account_id == account_id)
                    .order_by(TimelineEntry.id)
                )
            ).all()
        )


async def test_entries_are_written_once_and_payments_follow_their_plans_owner(
    identity,
    customers,
    customers_service,
    data,  # noqa: F811
):
    company = await sign_up(identity)
    tenant = company.tenant.id
    account = await new_account(customers, company, "小米科技有限责任公司")
    contract = contracts_pb2.Contract(
        id="c1",
        number="C-1",
        title="年度框架",
        account_id=account.id,
        amount="300000.00",
        currency="CNY",
        status=contracts_pb2.CONTRACT_STATUS_ACTIVE,
        owner_id="rep-1",
        department_id="dep-1",
        start_date="2027-01-01",
        end_date="2027-12-31",
    )
    signed = envelope(events_pb2.ContractStatusChanged(contract=contract, previous_status="approved"), tenant)
    for _ in range(3):  # redelivered, replayed: one entry
        await deliver(customers_service, signed)
    plan = contracts_pb2.PaymentPlan(
        id="p1",
        contract_id="c1",
        account_id=account.id,
        currency="CNY",
        total="300000.00",
        owner_id="rep-1",
        instalments=[contracts_pb2.Instalment(id="i1", plan_id="p1", sequence=1, amount="300000.00")],
    )
    await deliver(customers_service, envelope(events_pb2.PaymentPlanCreated(plan=plan), tenant))
    paid = contracts_pb2.Payment(
        id="pay1",
        plan_id="p1",
        account_id=account.id,
        amount="100000.00",
        currency="CNY",
        paid_date="2027-02-01",
        method="bank_transfer",
    )
    await deliver(customers_service, envelope(events_pb2.PaymentRecorded(payment=paid), tenant))
    # Not for the timeline: a draft quote, an account of another tenant, an account that does not exist.
    draft = quotes_pb2.Quote(
        id="q1", number="Q-1", account_id=account.id, status=quotes_pb2.QUOTE_STATUS_DRAFT
    )
    await deliver(customers_service, envelope(events_pb2.QuoteStatusChanged(quote=draft), tenant))
    other = await sign_up(identity)
    await deliver(
        customers_service, envelope(events_pb2.ContractStatusChanged(contract=contract), other.tenant.id)
    )
    contract.account_id = "01a00000-0000-7000-8000-000000000000"
    await deliver(customers_service, envelope(events_pb2.ContractStatusChanged(contract=contract), tenant))

    rows = await entries(customers_service, account.id)
    assert sorted(r.kind for r in rows) == [
        "sales.contract_active",
        "sales.payment_plan_created",
        "sales.payment_recorded",
    ]
    by_kind = {r.kind: r for r in rows}
    assert by_kind["sales.contract_active"].title_zh == "合同生效：C-1 年度框架"
    assert by_kind["sales.contract_active"].summary_en == "300000.00 CNY, 2027-01-01 – 2027-12-31"
    # A payment names no owner: it takes its plan's, and the plan its contract's department.
    assert (by_kind["sales.payment_recorded"].owner_id, by_kind["sales.payment_recorded"].department_id) == (
        "rep-1",
        "dep-1",
    )
    assert by_kind["sales.payment_recorded"].title_en == "Payment received: 100000.00 CNY"

    # A merge takes the entries to the survivor, and its undo brings them back.
    survivor = await new_account(customers, company, "小米集团")
    merged = await data.CreateMerge(
        dq.CreateMergeRequest(
            record_type=pb.RECORD_TYPE_ACCOUNT, survivor_id=survivor.id, merged_ids=[account.id]
        ),
        metadata=company.md,
    )
    assert len(await entries(customers_service, survivor.id)) == 3
    await data.UndoMerge(dq.UndoMergeRequest(id=merged.merge.id), metadata=company.md)
    assert len(await entries(customers_service, account.id)) == 3
    # Purged with the account.
    await customers.DeleteAccount(pb.DeleteAccountRequest(id=account.id), metadata=company.md)
    await customers.PurgeAccount(pb.PurgeAccountRequest(id=account.id), metadata=company.md)
    assert await entries(customers_service, account.id) == []
