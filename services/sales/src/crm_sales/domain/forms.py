"""Public web forms: a token per form, spam protection (honeypot field, per-form rate limit, a signed
time-to-submit stamp), and the lead each accepted submission becomes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

from crm.common.v1 import event_pb2
from crm.sales.v1 import events_pb2
from crm.sales.v1 import leads_pb2 as pb
from crm_kit import context
from crm_kit.context import Principal
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import NotFound, TooManyRequests
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check, updatable
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain import leads
from crm_sales.domain.common import (
    caller,
    get_owned,
    snapshot,
    to_message,
)

LEAD_FIELDS = ("name", "company", "title", "email", "phone", "region", "industry", "territory", "description")
UPDATABLE = (
    "name",
    "active",
    "pool_id",
    "campaign_id",
    "source_detail",
    "fields",
    "honeypot_field",
    "min_seconds_to_submit",
    "max_submissions_per_minute",
    "title",
    "thank_you_message",
)
AUDITED = tuple(f for f in UPDATABLE)
DEFAULT_THANKS = "感谢您的留言，我们会尽快与您联系。Thank you — we will be in touch soon."
MAX_VALUES = 60


def form_pb(form: models.WebForm) -> pb.WebForm:
    return to_message(form, pb.WebForm)


def _emit(uow: UnitOfWork, form: models.WebForm, action: str, before=None, after=None) -> None:  # type: ignore[no-untyped-def]
    uow.emit(
        events_pb2.WebFormChanged(form=form_pb(form)),
        aggregate_type="web_form",
        aggregate_id=form.id,
        aggregate_version=form.version,
        action=action,
        before=before,
        after=after,
    )


async def _check(session: AsyncSession, check: Check, values: dict[str, Any]) -> None:
    if "name" in values:
        check.required("name", values["name"])
        check.length("name", values["name"], max_len=200)
    for name in ("title", "source_detail"):
        if name in values:
            check.length(name, values[name], max_len=300)
    if "thank_you_message" in values:
        check.length("thank_you_message", values["thank_you_message"], max_len=2000)
    if values.get("fields"):
        for i, f in enumerate(values["fields"]):
            if not f or len(f) > 100:
                check.fail(f"fields[{i}]", "must be 1..100 characters")
    if "honeypot_field" in values and values["honeypot_field"] in (values.get("fields") or LEAD_FIELDS):
        check.fail("honeypot_field", "must not be one of the form's real fields")
    for name, top in (("min_seconds_to_submit", 3600), ("max_submissions_per_minute", 100_000)):
        if name in values and not 0 <= values[name] <= top:
            check.fail(name, f"must be between 0 and {top}")
    if values.get("pool_id"):
        check.uuid("pool_id", values["pool_id"])
        if not check.errors and not await session.scalar(
            select(models.LeadPool.id).where(
                models.LeadPool.id == values["pool_id"], models.LeadPool.tenant_id == caller().tenant_id
            )
        ):
            check.fail("pool_id", "no such lead pool")


async def create(uow: UnitOfWork, request: pb.CreateWebFormRequest) -> models.WebForm:
    values = {f: getattr(request, f) for f in UPDATABLE if f != "active"}
    values["fields"] = list(request.fields) or ["name", "company", "email", "phone"]
    values["honeypot_field"] = request.honeypot_field or "website"
    values["max_submissions_per_minute"] = request.max_submissions_per_minute or 30
    check = Check()
    check.required("name", request.name)
    await _check(uow.session, check, values)
    check.done()
    principal = caller()
    form = models.WebForm(
        id=new_id(),
        tenant_id=principal.tenant_id,
        token=secrets.token_urlsafe(24),
        active=True,
        created_by=principal.actor_id if not principal.is_api_key else "",
        version=1,
        **{k: v.strip() if isinstance(v, str) else v for k, v in values.items()},
    )
    if not form.thank_you_message:
        form.thank_you_message = DEFAULT_THANKS
    uow.session.add(form)
    await uow.session.flush()
    await uow.session.refresh(form)
    _emit(uow, form, "created", after=snapshot(form, AUDITED))
    return form


async def get(session: AsyncSession, form_id: str, *, lock: bool = False) -> models.WebForm:
    return await get_owned(session, models.WebForm, "web_form", form_id, lock=lock)


async def list_forms(session: AsyncSession, request: pb.ListWebFormsRequest) -> tuple[list[Any], str]:
    keys = [SortKey(models.WebForm.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.WebForm).where(models.WebForm.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update(uow: UnitOfWork, request: pb.UpdateWebFormRequest) -> models.WebForm:
    paths = list(request.update_mask.paths)
    updatable(paths, UPDATABLE)
    form = await get(uow.session, request.id, lock=True)
    expect_version(form, request.expected_version)
    values = {p: list(getattr(request.form, p)) if p == "fields" else getattr(request.form, p) for p in paths}
    check = Check()
    await _check(uow.session, check, values)
    check.done()
    before = snapshot(form, AUDITED)
    for p, v in values.items():
        setattr(form, p, v.strip() if isinstance(v, str) else v)
    after = snapshot(form, AUDITED)
    if after == before:
        return form
    form.version += 1
    await uow.session.flush()
    await uow.session.refresh(form)
    _emit(uow, form, "updated", before=before, after=after)
    return form


# ---------------------------------------------------------------- the public side


def sign_start(secret: str, token: str, at: dt.datetime) -> str:
    stamp = str(int(at.timestamp()))
    mac = hmac.new(secret.encode(), f"{token}.{stamp}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{stamp}.{mac}"


def started_at(secret: str, token: str, started_token: str) -> dt.datetime | None:
    """When the form was shown, if the stamp is one this service signed for this form; else None."""
    stamp, _, _mac = started_token.partition(".")
    if not stamp.isdigit() or len(stamp) > 12:
        return None
    expected = sign_start(secret, token, dt.datetime.fromtimestamp(int(stamp), dt.UTC))
    if not hmac.compare_digest(expected, started_token):
        return None
    return dt.datetime.fromtimestamp(int(stamp), dt.UTC)


async def by_token(session: AsyncSession, token: str, *, lock: bool = False) -> models.WebForm:
    stmt = select(models.WebForm).where(models.WebForm.token == token, models.WebForm.active.is_(True))
    if lock:
        stmt = stmt.with_for_update()
    form = (await session.execute(stmt)).scalar_one_or_none() if 0 < len(token) <= 64 else None
    if form is None:
        raise NotFound("no such form", reason="web_form_not_found")
    return form


def act_as_form(form: models.WebForm) -> None:
    """A public submission has no credential: it acts in the form's tenant, as the form."""
    context.current().principal = Principal(
        tenant_id=form.tenant_id,
        actor_id=f"web_form:{form.id}",
        actor_type=event_pb2.ACTOR_TYPE_SYSTEM,
        name=form.name,
    )


async def submit(
    uow: UnitOfWork, request: pb.SubmitWebFormRequest, *, secret: str, now: dt.datetime
) -> tuple[bool, str]:
    session = uow.session
    # The lock serialises one form's submissions, so its per-minute limit is exact.
    form = await by_token(session, request.token, lock=True)
    act_as_form(form)
    recent = await session.scalar(
        select(func.count()).where(
            models.FormSubmission.form_id == form.id,
            models.FormSubmission.submitted_at > now - dt.timedelta(minutes=1),
        )
    )
    if form.max_submissions_per_minute and (recent or 0) >= form.max_submissions_per_minute:
        raise TooManyRequests(
            "too many submissions of this form; try again in a minute", reason="form_rate_limited"
        )
    values = dict(request.values)
    spam = ""
    if len(values) > MAX_VALUES:
        spam = "too_many_values"
    elif form.honeypot_field and values.get(form.honeypot_field, "").strip():
        spam = "honeypot"
    elif form.min_seconds_to_submit:
        started = started_at(secret, form.token, request.started_token)
        if started is None:
            spam = "missing_start_stamp"
        elif (now - started).total_seconds() < form.min_seconds_to_submit:
            spam = "too_fast"
    submission = models.FormSubmission(
        id=new_id(),
        tenant_id=form.tenant_id,
        form_id=form.id,
        outcome="spam" if spam else "accepted",
        submitted_at=now,
    )
    session.add(submission)
    if spam:
        uow.emit(
            events_pb2.WebFormSubmissionRejected(form_id=form.id, reason=spam),
            aggregate_type="web_form",
            aggregate_id=form.id,
            aggregate_version=form.version,
            action="submission_rejected",
        )
        # Answered like a success: a bot learns nothing.
        return False, form.thank_you_message
    values.pop(form.honeypot_field, None)
    lead_values = {k: v for k, v in values.items() if k in LEAD_FIELDS}
    attributes = {k: v for k, v in values.items() if k not in LEAD_FIELDS}
    if not lead_values.get("name"):
        lead_values["name"] = lead_values.get("company") or lead_values.get("email") or ""
    lead = await leads.create(
        uow,
        values={**lead_values, "source_detail": form.source_detail or form.name},
        source="web_form",
        attributes=attributes,
        pool_id=form.pool_id,
        owner_id="",
        campaign_id=form.campaign_id,
        form_id=form.id,
        fallback_owner=form.created_by or None,
        people=None,
        now=now,
    )
    submission.lead_id = lead.id
    return True, form.thank_you_message
