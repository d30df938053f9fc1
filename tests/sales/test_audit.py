"""Every change in sales is an event, and identity's audit trail records it with who did what."""

from __future__ import annotations

import asyncio

from crm.identity.v1 import identity_pb2 as ipb
from crm.sales.v1 import leads_pb2 as pb
from google.protobuf import field_mask_pb2

from tests.sales.helpers import team


async def test_a_leads_creation_claim_and_update_reach_the_audit_trail_with_before_and_after(identity, leads):
    company, (rep,) = await team(identity, 1)
    pool = (
        await leads.CreateLeadPool(
            pb.CreateLeadPoolRequest(name="审计池", member_ids=[rep.id]), metadata=company.md
        )
    ).pool
    lead = (
        await leads.CreateLead(pb.CreateLeadRequest(name="郑爽", pool_id=pool.id), metadata=company.md)
    ).lead
    await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md)
    await leads.UpdateLead(
        pb.UpdateLeadRequest(
            id=lead.id, lead=pb.Lead(title="IT 总监"), update_mask=field_mask_pb2.FieldMask(paths=["title"])
        ),
        metadata=rep.md,
    )
    records: list = []
    for _ in range(100):  # relay → NATS → identity's audit consumer, asynchronously
        records = list(
            (
                await identity.ListAuditEvents(
                    ipb.ListAuditEventsRequest(object_type="lead", object_id=lead.id), metadata=company.md
                )
            ).items
        )
        if len(records) >= 3:
            break
        await asyncio.sleep(0.1)
    by_action = {r.action: r for r in records}
    assert {"created", "claimed", "updated"} <= set(by_action), [r.action for r in records]
    assert all(r.service == "sales" for r in records)
    assert by_action["claimed"].actor.id == rep.id
    changes = {c.field: (c.before.string_value, c.after.string_value) for c in by_action["updated"].changes}
    assert changes == {"title": ("", "IT 总监")}
