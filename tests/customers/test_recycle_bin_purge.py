"""The recycle bin's end: records stay restorable for the tenant's retention, then the periodic job purges them
for good (one replica at a time, each with one audited event), with what belongs to them alone; an
administrator may purge one record at once."""

from __future__ import annotations

import asyncio

import grpc
from crm.common.v1 import event_pb2
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import data_quality_pb2 as dq
from crm.customers.v1 import events_pb2
from crm_customers.domain import recycle_bin
from crm_kit.db import Database
from crm_kit.testing import recorded_events
from google.protobuf import field_mask_pb2
from sqlalchemy import text

from tests.customers.helpers import new_account, rpc_error, sign_up
from tests.customers.test_gateway_customers import capi, create_account, member  # noqa: F401
from tests.customers.test_merge import contact, data, relate, visit  # noqa: F401
from tests.gateway.conftest import assert_problem
from tests.gateway.conftest import sign_up as sign_up_http


async def age(service, table: str, record_id: str, days: int) -> None:
    """As if the record had been deleted `days` ago."""
    async with service.runtime.db.unit_of_work() as uow:
        await uow.session.execute(
            text(f"UPDATE {table} SET deleted_at = now() - make_interval(days => :d) WHERE id = :id"),
            {"d": days, "id": record_id},
        )


async def events(service, aggregate_id: str) -> list[event_pb2.EventEnvelope]:
    return await recorded_events(service.runtime.db, aggregate_id)


async def exists(service, table: str, record_id: str) -> bool:
    async with service.runtime.db.read() as session:
        return bool(await session.scalar(text(f"SELECT 1 FROM {table} WHERE id = :id"), {"id": record_id}))


async def delete_account(customers, company, account_id):
    await customers.DeleteAccount(pb.DeleteAccountRequest(id=account_id), metadata=company.md)


async def test_the_job_purges_what_outlived_the_retention_with_what_belonged_to_it_alone(
    identity, customers, customers_service
):
    company = await sign_up(identity)
    await customers.UpdateRecycleBinSettings(
        pb.UpdateRecycleBinSettingsRequest(retention_days=10), metadata=company.md
    )
    gone = await new_account(customers, company, "即将清除有限公司")
    partner = await new_account(customers, company, "合作伙伴有限公司")
    person = await contact(customers, company, "王小明", [gone.id, partner.id])
    await customers.UpdateContact(
        pb.UpdateContactRequest(
            id=person.id,
            contact=pb.Contact(primary_account_id=gone.id),
            update_mask=field_mask_pb2.FieldMask(paths=["primary_account_id"]),
        ),
        metadata=company.md,
    )
    edge = await relate(customers, company, "partner_of", gone.id, partner.id)
    alone = await visit(customers, company, account_ids=[gone.id])
    shared = await visit(customers, company, account_ids=[gone.id, partner.id], contact_ids=[person.id])
    await delete_account(customers, company, gone.id)
    recent = await new_account(customers, company, "刚删除有限公司")
    await delete_account(customers, company, recent.id)
    await age(customers_service, "accounts", gone.id, 11)
    await age(customers_service, "accounts", recent.id, 9)
    # Another tenant keeps the default (30 days): eleven days is not enough there.
    other = await sign_up(identity)
    kept = await new_account(customers, other, "别家有限公司")
    await delete_account(customers, other, kept.id)
    await age(customers_service, "accounts", kept.id, 11)

    # Three runs at once (the job, a manual run, a second database pool): every record is purged once.
    db = customers_service.runtime.db
    second = Database(customers_service.settings.database_url, pool_size=2)
    try:
        results = await asyncio.gather(
            recycle_bin.purge_expired(db), recycle_bin.purge_expired(second), recycle_bin.purge_expired(db)
        )
    finally:
        await second.dispose()
    assert sum(results) == 1

    assert not await exists(customers_service, "accounts", gone.id)
    assert await exists(customers_service, "accounts", recent.id)
    assert await exists(customers_service, "accounts", kept.id)
    assert not await exists(customers_service, "relationships", edge.id)
    assert not await exists(customers_service, "interactions", alone.id)
    for call in (
        customers.GetAccount(pb.GetAccountRequest(id=gone.id), metadata=company.md),
        customers.RestoreAccount(pb.RestoreAccountRequest(id=gone.id), metadata=company.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    left = (
        await customers.GetInteraction(pb.GetInteractionRequest(id=shared.id), metadata=company.md)
    ).interaction
    assert list(left.account_ids) == [partner.id] and list(left.contact_ids) == [person.id]
    assert left.version == shared.version + 1
    unlinked = (await customers.GetContact(pb.GetContactRequest(id=person.id), metadata=company.md)).contact
    assert list(unlinked.account_ids) == [partner.id] and unlinked.primary_account_id == ""

    [purged] = [e for e in await events(customers_service, gone.id) if e.action == "purged"]
    assert purged.type == "crm.customers.v1.AccountPurged" and purged.tenant_id == company.tenant.id
    assert purged.actor.type == event_pb2.ACTOR_TYPE_SYSTEM and purged.actor.id == recycle_bin.JOB_ACTOR
    payload = events_pb2.AccountPurged()
    purged.payload.Unpack(payload)
    assert payload.account_id == gone.id and payload.reason == "retention"
    s = payload.summary
    assert (s.relationships_removed, s.interactions_removed, s.interactions_unlinked) == (1, 1, 1)
    assert list(s.contact_ids_unlinked) == [person.id] and s.history_removed >= 1
    contact_events = await events(customers_service, person.id)
    assert contact_events[-1].type == "crm.customers.v1.ContactUpdated"
    assert {c.field for c in contact_events[-1].changes} == {"account_ids", "primary_account_id"}

    # Nothing left to do: the next run purges nothing.
    assert await recycle_bin.purge_expired(db) == 0


async def test_records_of_a_merge_that_can_be_undone_wait(identity, customers, customers_service, data):  # noqa: F811
    company = await sign_up(identity)
    survivor = await new_account(customers, company, "美的集团股份有限公司")
    folded = await new_account(customers, company, "美的集团")
    merged = await data.CreateMerge(
        dq.CreateMergeRequest(
            record_type=pb.RECORD_TYPE_ACCOUNT, survivor_id=survivor.id, merged_ids=[folded.id]
        ),
        metadata=company.md,
    )
    await age(customers_service, "accounts", folded.id, 40)
    await recycle_bin.purge_expired(customers_service.runtime.db)
    assert await exists(customers_service, "accounts", folded.id)  # the merge can still be undone

    # An administrator purges it now (an erasure request): the merge can no longer be undone.
    await customers.PurgeAccount(pb.PurgeAccountRequest(id=folded.id), metadata=company.md)
    assert not await exists(customers_service, "accounts", folded.id)
    err = await rpc_error(data.UndoMerge(dq.UndoMergeRequest(id=merged.merge.id), metadata=company.md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    [purged] = [e for e in await events(customers_service, folded.id) if e.action == "purged"]
    payload = events_pb2.AccountPurged()
    purged.payload.Unpack(payload)
    assert payload.reason == "manual" and list(payload.summary.merge_ids_closed) == [merged.merge.id]


async def test_retention_and_purge_now_through_the_gateway(capi):  # noqa: F811
    company = await sign_up_http(capi)
    h = company.headers
    got = await capi.get("/api/v1/recycle-bin/settings", headers=h)
    assert got.status_code == 200 and got.json() == {"retention_days": 30, "version": 0}
    assert_problem(await capi.put("/api/v1/recycle-bin/settings", json={"retention_days": 0}, headers=h), 422)
    assert_problem(
        await capi.put("/api/v1/recycle-bin/settings", json={"retention_days": 3651}, headers=h), 422
    )
    put = await capi.put("/api/v1/recycle-bin/settings", json={"retention_days": 7}, headers=h)
    assert put.status_code == 200, put.text
    assert put.json()["retention_days"] == 7 and put.headers["etag"] == '"1"'
    stale = await capi.put(
        "/api/v1/recycle-bin/settings", json={"retention_days": 14}, headers={**h, "If-Match": '"5"'}
    )
    assert_problem(stale, 412)

    rep = await member(
        capi,
        company,
        [{"object": "contact", "actions": ["*"], "data_scope": "all"}],
    )
    assert_problem(
        await capi.put("/api/v1/recycle-bin/settings", json={"retention_days": 1}, headers=rep), 403
    )
    assert (await capi.get("/api/v1/recycle-bin/settings", headers=rep)).json()["retention_days"] == 7

    person = await capi.post("/api/v1/contacts", json={"name": "李雷", "phones": ["13800138000"]}, headers=h)
    pid = person.json()["id"]
    firm = await create_account(capi, h, name="韩梅梅咨询有限公司")
    met = await capi.post(
        "/api/v1/interactions",
        json={
            "kind": "meeting",
            "subject": "需求会",
            "account_ids": [firm["id"]],
            "contact_ids": [pid],
            "participants": [
                {"kind": "contact", "id": pid, "name": "李雷"},
                {"kind": "external", "name": "韩梅梅"},
            ],
        },
        headers=h,
    )
    assert met.status_code == 201, met.text
    assert_problem(await capi.post(f"/api/v1/contacts/{pid}/purge", headers=h), 409, "not_deleted")
    assert (await capi.delete(f"/api/v1/contacts/{pid}", headers=h)).status_code == 204
    assert_problem(
        await capi.post(f"/api/v1/contacts/{pid}/purge", headers=rep), 403
    )  # no recycle_bin delete
    stranger = await sign_up_http(capi)
    assert_problem(await capi.post(f"/api/v1/contacts/{pid}/purge", headers=stranger.headers), 404)
    purged = await capi.post(f"/api/v1/contacts/{pid}/purge", headers=h)
    assert purged.status_code == 204, purged.text
    assert_problem(await capi.get(f"/api/v1/contacts/{pid}", headers=h), 404)
    assert_problem(await capi.post(f"/api/v1/contacts/{pid}/restore", headers=h), 404)
    binned = await capi.get("/api/v1/contacts", params={"deleted": "true"}, headers=h)
    assert pid not in [c["id"] for c in binned.json()["items"]]
    after = (await capi.get(f"/api/v1/interactions/{met.json()['id']}", headers=h)).json()
    assert after["account_ids"] == [firm["id"]] and after["contact_ids"] == []
    assert [p["name"] for p in after["participants"]] == ["韩梅梅"] and "李雷" not in str(after)

    account = await create_account(capi, h, name="华为技术有限公司")
    assert (await capi.delete(f"/api/v1/accounts/{account['id']}", headers=h)).status_code == 204
    assert (await capi.post(f"/api/v1/accounts/{account['id']}/purge", headers=h)).status_code == 204
    assert_problem(await capi.get(f"/api/v1/accounts/{account['id']}", headers=h), 404)
