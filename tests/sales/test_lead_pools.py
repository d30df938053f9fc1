"""Lead pools: claim within a cap, manager assignment, release with a reason and cooldown, automatic reclaim
with a warning first, the full history, and the claim race."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import grpc
from crm.sales.v1 import leads_pb2 as pb
from crm_kit.errors import from_rpc_error
from google.protobuf import timestamp_pb2

from tests.identity.helpers import rpc_error
from tests.sales.helpers import team


def at(when: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def make_pool(leads, company, reps, **rules) -> pb.LeadPool:
    return (
        await leads.CreateLeadPool(
            pb.CreateLeadPoolRequest(
                name=rules.pop("name", "华东公海"), member_ids=[r.id for r in reps], **rules
            ),
            metadata=company.md,
        )
    ).pool


async def pool_leads(leads, company, pool, n: int) -> list[pb.Lead]:
    return [
        (
            await leads.CreateLead(
                pb.CreateLeadRequest(name=f"客户{i}", company=f"上海某某{i}有限公司", pool_id=pool.id),
                metadata=company.md,
            )
        ).lead
        for i in range(n)
    ]


async def test_a_rep_claims_leads_up_to_the_pool_cap(identity, leads):
    company, (rep,) = await team(identity, 1)
    pool = await make_pool(leads, company, [rep], claim_cap=2)
    waiting = await pool_leads(leads, company, pool, 3)
    assert all(not lead.owner_id for lead in waiting)
    visible = await leads.ListLeads(pb.ListLeadsRequest(pool_id=pool.id, unowned=True), metadata=rep.md)
    assert {lead.id for lead in visible.items} == {lead.id for lead in waiting}

    for lead in waiting[:2]:
        claimed = (await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md)).lead
        assert claimed.owner_id == rep.id and claimed.claimed_at.seconds
    err = await rpc_error(leads.ClaimLead(pb.ClaimLeadRequest(id=waiting[2].id), metadata=rep.md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert from_rpc_error(err).reason == "claim_cap_reached"


async def test_a_claimed_lead_cannot_be_claimed_again_and_outsiders_cannot_claim(identity, leads):
    company, (first, second, outsider) = await team(identity, 3)
    pool = await make_pool(leads, company, [first, second])
    (lead,) = await pool_leads(leads, company, pool, 1)
    await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=first.md)
    err = await rpc_error(leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=second.md))
    assert from_rpc_error(err).reason in ("lead_already_owned", "lead_not_found")
    (other,) = await pool_leads(leads, company, pool, 1)
    err = await rpc_error(leads.ClaimLead(pb.ClaimLeadRequest(id=other.id), metadata=outsider.md))
    # Not a member: the pool's waiting leads are not even visible.
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_release_needs_a_reason_and_the_rep_cools_down_before_reclaiming(identity, leads, clock):
    company, (rep, colleague) = await team(identity, 2)
    pool = await make_pool(leads, company, [rep, colleague], cooldown_hours=48)
    (lead,) = await pool_leads(leads, company, pool, 1)
    await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md)

    err = await rpc_error(leads.ReleaseLead(pb.ReleaseLeadRequest(id=lead.id), metadata=rep.md))
    assert [f.field for f in from_rpc_error(err).field_errors] == ["reason"]
    released = (
        await leads.ReleaseLead(pb.ReleaseLeadRequest(id=lead.id, reason="客户暂无预算"), metadata=rep.md)
    ).lead
    assert not released.owner_id

    err = await rpc_error(leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md))
    assert from_rpc_error(err).reason == "claim_cooldown"
    clock.advance(hours=47)
    err = await rpc_error(leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md))
    assert from_rpc_error(err).reason == "claim_cooldown"
    clock.advance(hours=2)
    again = (await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md)).lead
    assert again.owner_id == rep.id


async def test_a_colleague_may_claim_a_released_lead_at_once(identity, leads):
    company, (rep, colleague) = await team(identity, 2)
    pool = await make_pool(leads, company, [rep, colleague], cooldown_hours=48)
    (lead,) = await pool_leads(leads, company, pool, 1)
    await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md)
    await leads.ReleaseLead(pb.ReleaseLeadRequest(id=lead.id, reason="不是我的区域"), metadata=rep.md)
    taken = (await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=colleague.md)).lead
    assert taken.owner_id == colleague.id


async def test_reclaimed_lead_returns_to_pool_after_7_days_without_follow_up(identity, leads, clock):
    company, (rep,) = await team(identity, 1)
    pool = await make_pool(leads, company, [rep], follow_up_days=7, warn_hours_before=24, cooldown_hours=72)
    followed, idle = await pool_leads(leads, company, pool, 2)
    for lead in (followed, idle):
        await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md)
    start = clock.now()

    # Day 5: a follow-up on one lead restarts its clock.
    clock.advance(days=5)
    await leads.CreateLeadFollowUp(
        pb.CreateLeadFollowUpRequest(id=followed.id, kind="call", content="电话沟通，客户有意向"),
        metadata=rep.md,
    )
    # Day 6.5: the idle lead is within a day of its deadline: one warning, and only one.
    six_and_a_half = start + dt.timedelta(days=6, hours=12)
    run = await leads.RunLeadReclaim(pb.RunLeadReclaimRequest(now=at(six_and_a_half)), metadata=company.md)
    assert (run.reclaimed, run.warned) == (0, 1)
    run = await leads.RunLeadReclaim(pb.RunLeadReclaimRequest(now=at(six_and_a_half)), metadata=company.md)
    assert (run.reclaimed, run.warned) == (0, 0)

    # Day 7 and a minute: the idle lead goes back; the followed-up one stays (its deadline is day 12).
    run = await leads.RunLeadReclaim(
        pb.RunLeadReclaimRequest(now=at(start + dt.timedelta(days=7, minutes=1))), metadata=company.md
    )
    assert run.reclaimed == 1
    idle_now = (await leads.GetLead(pb.GetLeadRequest(id=idle.id), metadata=company.md)).lead
    followed_now = (await leads.GetLead(pb.GetLeadRequest(id=followed.id), metadata=company.md)).lead
    assert not idle_now.owner_id and idle_now.pool_id == pool.id
    assert followed_now.owner_id == rep.id

    history = (await leads.ListLeadHistory(pb.ListLeadHistoryRequest(id=idle.id), metadata=company.md)).items
    assert [m.action for m in history] == ["created", "claimed", "reclaimed"]
    assert history[-1].reason == "no_follow_up" and history[-1].from_owner_id == rep.id
    assert history[-1].actor_id == "system"
    # Losing a lead to the reclaim starts the cooldown too.
    clock.advance(days=2)
    err = await rpc_error(leads.ClaimLead(pb.ClaimLeadRequest(id=idle.id), metadata=rep.md))
    assert from_rpc_error(err).reason == "claim_cooldown"


async def test_a_lead_not_converted_within_m_days_is_reclaimed_despite_follow_ups(identity, leads, clock):
    company, (rep,) = await team(identity, 1)
    pool = await make_pool(leads, company, [rep], follow_up_days=3, conversion_days=10)
    (lead,) = await pool_leads(leads, company, pool, 1)
    await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md)
    start = clock.now()
    for _ in range(4):
        clock.advance(days=2)
        await leads.CreateLeadFollowUp(
            pb.CreateLeadFollowUpRequest(id=lead.id, kind="visit", content="拜访"), metadata=rep.md
        )
    run = await leads.RunLeadReclaim(
        pb.RunLeadReclaimRequest(now=at(start + dt.timedelta(days=9))), metadata=company.md
    )
    assert run.reclaimed == 0
    run = await leads.RunLeadReclaim(
        pb.RunLeadReclaimRequest(now=at(start + dt.timedelta(days=10, seconds=1))), metadata=company.md
    )
    assert run.reclaimed == 1
    history = (await leads.ListLeadHistory(pb.ListLeadHistoryRequest(id=lead.id), metadata=company.md)).items
    assert history[-1].reason == "not_converted"


async def test_a_manager_assigns_within_the_cap_and_the_history_says_why(identity, leads):
    company, (rep,) = await team(identity, 1)
    pool = await make_pool(leads, company, [rep], claim_cap=1)
    first, second = await pool_leads(leads, company, pool, 2)
    assigned = (
        await leads.AssignLead(
            pb.AssignLeadRequest(id=first.id, owner_id=rep.id, reason="大客户，指定跟进"), metadata=company.md
        )
    ).lead
    assert assigned.owner_id == rep.id
    err = await rpc_error(
        leads.AssignLead(pb.AssignLeadRequest(id=second.id, owner_id=rep.id), metadata=company.md)
    )
    assert from_rpc_error(err).reason == "claim_cap_reached"
    # A rep is no manager.
    err = await rpc_error(
        leads.AssignLead(pb.AssignLeadRequest(id=second.id, owner_id=rep.id), metadata=rep.md)
    )
    assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    history = (await leads.ListLeadHistory(pb.ListLeadHistoryRequest(id=first.id), metadata=company.md)).items
    assert [(m.action, m.to_owner_id, m.reason) for m in history][-1] == (
        "assigned",
        rep.id,
        "大客户，指定跟进",
    )


async def test_200_concurrent_claims_of_50_leads_by_20_reps_hold_every_cap_and_give_each_lead_one_owner(
    identity, leads
):
    company, reps = await team(identity, 20)
    pool = await make_pool(leads, company, reps, name="抢单池", claim_cap=3)
    waiting = await pool_leads(leads, company, pool, 50)

    async def attempt(i: int) -> tuple[str, str, str]:
        # Every lead is wanted by 4 different reps (about 10 claims per rep, far over the cap of 3).
        lead_no, k = divmod(i, 4)
        rep, lead = reps[(lead_no + 5 * k) % 20], waiting[lead_no]
        try:
            won = await leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=rep.md)
            return rep.id, lead.id, "won" if won.lead.owner_id == rep.id else "wrong"
        except grpc.aio.AioRpcError as exc:
            return rep.id, lead.id, from_rpc_error(exc).reason

    outcomes = await asyncio.gather(*(attempt(i) for i in range(200)))
    reasons = Counter(o[2] for o in outcomes)
    print("claim outcomes:", dict(reasons))
    assert set(reasons) <= {"won", "lead_already_owned", "claim_cap_reached"}, reasons
    wins = [(rep, lead) for rep, lead, outcome in outcomes if outcome == "won"]

    final = {}
    for lead in waiting:
        final[lead.id] = (
            await leads.GetLead(pb.GetLeadRequest(id=lead.id), metadata=company.md)
        ).lead.owner_id
    held = Counter(owner for owner in final.values() if owner)
    assert max(held.values()) <= 3, held  # every cap held
    winners_per_lead = Counter(lead for _, lead in wins)
    assert max(winners_per_lead.values()) == 1  # exactly one winner per lead
    assert {lead: rep for rep, lead in wins} == {lead: owner for lead, owner in final.items() if owner}
    # Capacity (20 × 3) exceeds the leads, and each lead had 4 claimants: nearly every lead found its owner.
    assert sum(held.values()) == len(wins) >= 40
    for lead_id in list(final)[:5]:
        moves = (
            await leads.ListLeadHistory(pb.ListLeadHistoryRequest(id=lead_id), metadata=company.md)
        ).items
        assert [m.action for m in moves].count("claimed") == (1 if final[lead_id] else 0)
