"""A new company works on day one: when identity announces a new tenant (TenantCreated), customers gives it the
usual duplicate rules, named in the company's language: a similar company name (accounts), the same mobile
phone and the same e-mail (contacts). They warn (the record is made and the answer names what it duplicates)
and let imports through, so nothing is refused or left out before an administrator has chosen otherwise.

The kit's inbox makes a redelivered event a no-op, and a rule the company already has (same record type and
match, made by an administrator quicker than the event) is not added twice. Each is an ordinary rule
(DuplicateRuleCreated, audited) that an administrator edits, switches off or deletes."""

from __future__ import annotations

from crm.common.v1 import event_pb2
from crm.customers.v1 import customers_pb2, duplicates_pb2
from crm.customers.v1 import data_quality_pb2 as dq
from crm.identity.v1 import events_pb2 as identity_events
from crm_kit.db import UnitOfWork
from crm_kit.events.consumer import Consumer
from sqlalchemy import select

from crm_customers.domain.dedup import rules
from crm_customers.domain.dedup.common import MATCHES, RECORD_TYPES, caller
from crm_customers.domain.dedup.models import DuplicateRule

ACCOUNT, CONTACT = customers_pb2.RECORD_TYPE_ACCOUNT, customers_pb2.RECORD_TYPE_CONTACT
# (record type, match, zh-CN name, en name)
DEFAULT_RULES = [
    (ACCOUNT, duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME, "公司名称相似", "Similar company name"),
    (CONTACT, duplicates_pb2.DUPLICATE_MATCH_PHONE, "手机号相同", "Same mobile phone"),
    (CONTACT, duplicates_pb2.DUPLICATE_MATCH_EMAIL, "邮箱相同", "Same e-mail"),
]


async def set_up_defaults(uow: UnitOfWork, *, locale: str) -> list[DuplicateRule]:
    """The default duplicate rules of the caller's company, those it does not have yet."""
    have = set(
        (
            await uow.session.execute(
                select(DuplicateRule.record_type, DuplicateRule.match).where(
                    DuplicateRule.tenant_id == caller().tenant_id
                )
            )
        ).all()
    )
    made = []
    for record_type, match, zh, en in DEFAULT_RULES:
        if (RECORD_TYPES[record_type], MATCHES[match]) in have:
            continue
        rule = dq.DuplicateRule(
            name=en if locale == "en" else zh,
            record_type=record_type,
            match=match,
            on_create=duplicates_pb2.DUPLICATE_ACTION_WARN,
            on_update=duplicates_pb2.DUPLICATE_ACTION_WARN,
            on_import=dq.IMPORT_DUPLICATE_ACTION_CREATE,
        )
        made.append(await rules.create(uow, rule))
    return made


async def on_tenant_created(
    uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload: identity_events.TenantCreated
) -> None:
    await set_up_defaults(uow, locale=payload.tenant.locale)


def consumer(name: str) -> Consumer:
    return Consumer(name=name, filter_subjects=[identity_events.TenantCreated], handler=on_tenant_created)
