"""Public web forms: a token per form, honeypot, time-to-submit, per-form rate limit; accepted submissions
become attributed leads in the form's pool."""

from __future__ import annotations

import grpc
from crm.sales.v1 import leads_pb2 as pb
from crm_kit.errors import from_rpc_error

from tests.identity.helpers import rpc_error
from tests.sales.helpers import team


async def _form(leads, company, **extra) -> pb.WebForm:
    pool = (await leads.CreateLeadPool(pb.CreateLeadPoolRequest(name="官网线索池"), metadata=company.md)).pool
    return (
        await leads.CreateWebForm(
            pb.CreateWebFormRequest(
                name="官网留资",
                pool_id=pool.id,
                source_detail="官网首页",
                fields=["name", "company", "phone"],
                **extra,
            ),
            metadata=company.md,
        )
    ).form


async def _pool_leads(leads, company, form):
    return (await leads.ListLeads(pb.ListLeadsRequest(pool_id=form.pool_id), metadata=company.md)).items


async def test_a_visitor_submits_a_form_without_signing_in_and_a_lead_waits_in_the_pool(
    identity, leads, clock
):
    company, _ = await team(identity, 0)
    form = await _form(leads, company, min_seconds_to_submit=3)
    shown = await leads.GetPublicWebForm(pb.GetPublicWebFormRequest(token=form.token))
    assert shown.honeypot_field == "website" and list(shown.fields) == ["name", "company", "phone"]
    clock.advance(seconds=10)
    answer = await leads.SubmitWebForm(
        pb.SubmitWebFormRequest(
            token=form.token,
            values={
                "name": "陈静",
                "company": "杭州云帆科技",
                "phone": "13900001111",
                "budget": "50万",
                "website": "",
            },
            started_token=shown.started_token,
        )
    )
    assert answer.accepted and "Thank you" in answer.message
    (lead,) = await _pool_leads(leads, company, form)
    assert (lead.name, lead.company, lead.source, lead.form_id) == (
        "陈静",
        "杭州云帆科技",
        pb.LEAD_SOURCE_WEB_FORM,
        form.id,
    )
    assert lead.source_detail == "官网首页" and dict(lead.attributes) == {"budget": "50万"}
    assert not lead.owner_id


async def test_a_filled_honeypot_or_a_too_fast_submission_is_answered_alike_and_creates_nothing(
    identity, leads, clock
):
    company, _ = await team(identity, 0)
    form = await _form(leads, company, min_seconds_to_submit=5)
    shown = await leads.GetPublicWebForm(pb.GetPublicWebFormRequest(token=form.token))
    clock.advance(seconds=30)
    bot = await leads.SubmitWebForm(
        pb.SubmitWebFormRequest(
            token=form.token,
            values={"name": "bot", "website": "http://spam.example"},
            started_token=shown.started_token,
        )
    )
    clock.reset()
    shown = await leads.GetPublicWebForm(pb.GetPublicWebFormRequest(token=form.token))
    fast = await leads.SubmitWebForm(
        pb.SubmitWebFormRequest(token=form.token, values={"name": "快手"}, started_token=shown.started_token)
    )
    forged = await leads.SubmitWebForm(
        pb.SubmitWebFormRequest(token=form.token, values={"name": "伪造"}, started_token="1.deadbeef")
    )
    assert bot.accepted and fast.accepted and forged.accepted
    assert await _pool_leads(leads, company, form) == []


async def test_a_form_refuses_submissions_over_its_rate_and_unknown_tokens_are_404(identity, leads):
    company, _ = await team(identity, 0)
    form = await _form(leads, company, max_submissions_per_minute=2)
    for i in range(2):
        await leads.SubmitWebForm(pb.SubmitWebFormRequest(token=form.token, values={"name": f"访客{i}"}))
    err = await rpc_error(
        leads.SubmitWebForm(pb.SubmitWebFormRequest(token=form.token, values={"name": "第三位"}))
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert from_rpc_error(err).reason == "form_rate_limited"
    assert len(await _pool_leads(leads, company, form)) == 2
    err = await rpc_error(leads.SubmitWebForm(pb.SubmitWebFormRequest(token="nope", values={"name": "x"})))
    assert err.code() == grpc.StatusCode.NOT_FOUND
