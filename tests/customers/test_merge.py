"""Merges through the gRPC API: values chosen per field, relations and timeline move to the survivor, an event
tells other services, and undo puts everything back."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import data_quality_pb2 as dq
from crm.customers.v1 import data_quality_pb2_grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from sqlalchemy import text

from tests.customers.helpers import new_account, rpc_error, sign_up

ACCOUNT, CONTACT = pb.RECORD_TYPE_ACCOUNT, pb.RECORD_TYPE_CONTACT


@pytest.fixture(scope="session")
async def data(customers_service):
    async with grpc.aio.insecure_channel(customers_service.address) as channel:
        yield data_quality_pb2_grpc.CustomersDataServiceStub(channel)


def now() -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(dt.datetime.now(dt.UTC))
    return t


async def contact(customers, company, name, account_ids):
    request = pb.CreateContactRequest(contact=pb.Contact(name=name, account_ids=account_ids))
    return (await customers.CreateContact(request, metadata=company.md)).contact


async def visit(customers, company, account_ids=(), contact_ids=()):
    interaction = pb.Interaction(
        kind=pb.INTERACTION_KIND_VISIT,
        subject="拜访",
        occurred_at=now(),
        account_ids=list(account_ids),
        contact_ids=list(contact_ids),
    )
    request = pb.CreateInteractionRequest(interaction=interaction)
    return (await customers.CreateInteraction(request, metadata=company.md)).interaction


async def relate(customers, company, kind, source, target):
    request = pb.CreateRelationshipRequest(
        type=kind,
        source=pb.RecordRef(type=ACCOUNT, id=source),
        target=pb.RecordRef(type=ACCOUNT, id=target),
    )
    return (await customers.CreateRelationship(request, metadata=company.md)).relationship


async def get_account(customers, company, account_id):
    return (await customers.GetAccount(pb.GetAccountRequest(id=account_id), metadata=company.md)).account


async def timeline_ids(customers, company, account_id):
    request = pb.ListAccountTimelineRequest(id=account_id)
    return {i.id for i in (await customers.ListAccountTimeline(request, metadata=company.md)).items}


async def test_merge_moves_relations_and_timeline_and_undo_restores_them(
    identity, customers, data, customers_service
):
    company = await sign_up(identity)
    survivor = await new_account(customers, company, "华为技术有限公司", phones=["13800138000"], tags=["VIP"])
    merged = await new_account(
        customers,
        company,
        "深圳华为技术有限公司",
        legal_representative="赵明路",
        phones=["0755-28780808"],
        tags=["通信"],
        website="www.huawei.com",
    )
    partner = await new_account(customers, company, "中软国际有限公司")
    subsidiary = await new_account(customers, company, "华为终端有限公司", parent_id=merged.id)
    zhang = await contact(customers, company, "张伟", [merged.id])
    visit_merged = await visit(customers, company, account_ids=[merged.id])
    visit_both = await visit(customers, company, account_ids=[survivor.id, merged.id])
    edge = await relate(customers, company, "partner_of", merged.id, partner.id)
    # Both already partner of each other: after the merge this edge would exist twice, so it is retired.
    await relate(customers, company, "supplier_of", survivor.id, partner.id)
    twin = await relate(customers, company, "supplier_of", merged.id, partner.id)

    answer = await data.CreateMerge(
        dq.CreateMergeRequest(
            record_type=ACCOUNT,
            survivor_id=survivor.id,
            merged_ids=[merged.id],
            field_sources={"legal_representative": merged.id},
            expected_version=survivor.version,
        ),
        metadata=company.md,
    )
    merge = answer.merge
    assert merge.status == dq.MERGE_STATUS_MERGED and merge.references_moved >= 5
    assert merge.undo_until.ToDatetime() > dt.datetime.now() + dt.timedelta(days=29)

    kept = await get_account(customers, company, survivor.id)
    assert kept.name == "华为技术有限公司"  # the survivor's own value
    assert kept.legal_representative == "赵明路"  # chosen from the merged record
    assert kept.website == "https://www.huawei.com"  # empty on the survivor: taken from the merged one
    assert kept.phones == ["13800138000", "0755-28780808"] and kept.tags == ["VIP", "通信"]
    assert answer.account.id == survivor.id and answer.account.legal_representative == "赵明路"

    assert (await get_account(customers, company, merged.id)).deleted_at.seconds  # in the recycle bin
    live = await customers.ListAccounts(pb.ListAccountsRequest(), metadata=company.md)
    assert merged.id not in {a.id for a in live.items}
    moved_contact = (
        await customers.GetContact(pb.GetContactRequest(id=zhang.id), metadata=company.md)
    ).contact
    assert moved_contact.account_ids == [survivor.id]
    assert (await get_account(customers, company, subsidiary.id)).parent_id == survivor.id
    assert {visit_merged.id, visit_both.id} <= await timeline_ids(customers, company, survivor.id)
    both = (
        await customers.GetInteraction(pb.GetInteractionRequest(id=visit_both.id), metadata=company.md)
    ).interaction
    assert list(both.account_ids) == [survivor.id]
    moved_edge = (
        await customers.GetRelationship(pb.GetRelationshipRequest(id=edge.id), metadata=company.md)
    ).relationship
    assert moved_edge.source.id == survivor.id
    retired = await rpc_error(
        customers.GetRelationship(pb.GetRelationshipRequest(id=twin.id), metadata=company.md)
    )
    assert retired.code() == grpc.StatusCode.NOT_FOUND

    async with customers_service.runtime.db.read() as session:
        subjects = (
            (
                await session.execute(
                    text("SELECT subject FROM outbox_events WHERE aggregate_id = :id"), {"id": survivor.id}
                )
            )
            .scalars()
            .all()
        )
    assert any(s.endswith("crm.customers.v1.RecordsMerged") for s in subjects)

    undone = (await data.UndoMerge(dq.UndoMergeRequest(id=merge.id), metadata=company.md)).merge
    assert undone.status == dq.MERGE_STATUS_UNDONE and undone.undone_at.seconds

    back = await get_account(customers, company, merged.id)
    assert back.name == "深圳华为技术有限公司" and not back.deleted_at.seconds
    restored = await get_account(customers, company, survivor.id)
    assert (
        restored.legal_representative == ""
        and restored.phones == ["13800138000"]
        and restored.tags == ["VIP"]
    )
    assert (
        await customers.GetContact(pb.GetContactRequest(id=zhang.id), metadata=company.md)
    ).contact.account_ids == [merged.id]
    assert (await get_account(customers, company, subsidiary.id)).parent_id == merged.id
    assert visit_merged.id not in await timeline_ids(customers, company, survivor.id)
    both = (
        await customers.GetInteraction(pb.GetInteractionRequest(id=visit_both.id), metadata=company.md)
    ).interaction
    assert sorted(both.account_ids) == sorted([survivor.id, merged.id])
    edge_back = (
        await customers.GetRelationship(pb.GetRelationshipRequest(id=edge.id), metadata=company.md)
    ).relationship
    assert edge_back.source.id == merged.id
    twin_back = (
        await customers.GetRelationship(pb.GetRelationshipRequest(id=twin.id), metadata=company.md)
    ).relationship
    assert twin_back.source.id == merged.id

    again = await rpc_error(data.UndoMerge(dq.UndoMergeRequest(id=merge.id), metadata=company.md))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_contacts_merge_and_their_timeline_follows(identity, customers, data):
    company = await sign_up(identity)
    account = await new_account(customers, company, "阿里巴巴（中国）有限公司")
    a = await contact(customers, company, "王小明", [account.id])
    b = await contact(customers, company, "Wang Xiaoming", [account.id])
    call = await visit(customers, company, contact_ids=[b.id])
    merge = (
        await data.CreateMerge(
            dq.CreateMergeRequest(
                record_type=CONTACT, survivor_id=a.id, merged_ids=[b.id], field_sources={"name_latin": b.id}
            ),
            metadata=company.md,
        )
    ).merge
    assert merge.merged_ids == [b.id]
    moved = (
        await customers.GetInteraction(pb.GetInteractionRequest(id=call.id), metadata=company.md)
    ).interaction
    assert list(moved.contact_ids) == [a.id]
    listed = await data.ListMerges(dq.ListMergesRequest(survivor_id=a.id), metadata=company.md)
    assert [m.id for m in listed.items] == [merge.id]


async def test_undo_refuses_when_the_survivor_changed_since(identity, customers, data):
    company = await sign_up(identity)
    a = await new_account(customers, company, "小米科技有限责任公司")
    b = await new_account(customers, company, "北京小米科技有限责任公司")
    merge = (
        await data.CreateMerge(
            dq.CreateMergeRequest(record_type=ACCOUNT, survivor_id=a.id, merged_ids=[b.id]),
            metadata=company.md,
        )
    ).merge
    await customers.UpdateAccount(
        pb.UpdateAccountRequest(
            id=a.id, account=pb.Account(notes="新需求"), update_mask=field_mask_pb2.FieldMask(paths=["notes"])
        ),
        metadata=company.md,
    )
    err = await rpc_error(data.UndoMerge(dq.UndoMergeRequest(id=merge.id), metadata=company.md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "changed" in err.details()


async def test_merging_needs_records_of_ones_own_tenant(identity, customers, data):
    mine, theirs = await sign_up(identity), await sign_up(identity, "腾讯")
    a = await new_account(customers, mine, "华为技术有限公司")
    b = await new_account(customers, theirs, "华为")
    err = await rpc_error(
        data.CreateMerge(
            dq.CreateMergeRequest(record_type=ACCOUNT, survivor_id=a.id, merged_ids=[b.id]), metadata=mine.md
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    bad = await rpc_error(
        data.CreateMerge(
            dq.CreateMergeRequest(record_type=ACCOUNT, survivor_id=a.id, merged_ids=[a.id]), metadata=mine.md
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await get_account(customers, theirs, b.id)).name == "华为"
