"""Per-tenant duplicate rules: what matches (phone, e-mail, credit code, company name, person + company) and what
a create, an update and an import do about it."""

from __future__ import annotations

from typing import Any

from crm.customers.v1 import data_quality_pb2 as pb
from crm_kit.db import UnitOfWork
from crm_kit.errors import FieldError, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers.domain.dedup.common import (
    ACTION_PB,
    ACTIONS,
    IMPORT_ACTION_PB,
    IMPORT_ACTIONS,
    MATCH_PB,
    MATCHES,
    RECORD_TYPE_PB,
    RECORD_TYPES,
    caller,
    expect_version,
    get_owned,
    ts,
)
from crm_customers.domain.dedup.models import DuplicateRule

DEFAULT_THRESHOLD = 0.85
# Which matches make sense for which records.
MATCHES_FOR = {
    "account": ("phone", "email", "credit_code", "company_name"),
    "contact": ("phone", "email", "person_name_and_company"),
}
UPDATABLE = ("name", "threshold", "on_create", "on_update", "on_import", "active")


def rule_pb(r: DuplicateRule) -> pb.DuplicateRule:
    return pb.DuplicateRule(
        id=r.id,
        name=r.name,
        record_type=RECORD_TYPE_PB[r.record_type],
        match=MATCH_PB[r.match],
        threshold=r.threshold,
        on_create=ACTION_PB[r.on_create],
        on_update=ACTION_PB[r.on_update],
        on_import=IMPORT_ACTION_PB[r.on_import],
        active=r.active,
        created_at=ts(r.created_at),
        updated_at=ts(r.updated_at),
        version=r.version,
    )


def snapshot(r: DuplicateRule) -> dict[str, Any]:
    return {
        "name": r.name,
        "record_type": r.record_type,
        "match": r.match,
        "threshold": r.threshold,
        "on_create": r.on_create,
        "on_update": r.on_update,
        "on_import": r.on_import,
        "active": r.active,
    }


def _validate(check: Check, rule: pb.DuplicateRule, paths: set[str] | None) -> dict[str, Any]:
    """The checked values of the fields named by paths (all when None)."""
    values: dict[str, Any] = {}

    def wanted(name: str) -> bool:
        return paths is None or name in paths

    if wanted("name"):
        if check.required("name", rule.name):
            check.length("name", rule.name.strip(), max_len=200)
        values["name"] = rule.name.strip()
    if paths is None:
        record_type = RECORD_TYPES.get(rule.record_type)
        match = MATCHES.get(rule.match)
        if record_type is None:
            check.fail("record_type", "must be account or contact")
        if match is None:
            check.fail("match", "is required")
        elif record_type and match not in MATCHES_FOR[record_type]:
            check.fail("match", f"{match} does not apply to {record_type}s")
        values["record_type"], values["match"] = record_type, match
    if wanted("threshold"):
        threshold = rule.threshold or DEFAULT_THRESHOLD
        if not 0 < threshold <= 1:
            check.fail("threshold", "must be between 0 and 1")
        values["threshold"] = threshold
    for name, table, default in (
        ("on_create", ACTIONS, "warn"),
        ("on_update", ACTIONS, "warn"),
        ("on_import", IMPORT_ACTIONS, "skip"),
    ):
        if wanted(name):
            number = getattr(rule, name)
            if number and number not in table:
                check.fail(name, "is not a known action")
            values[name] = table.get(number, default)
    if wanted("active"):
        values["active"] = rule.active if paths is not None else True
    return values


async def create(uow: UnitOfWork, rule: pb.DuplicateRule) -> DuplicateRule:
    check = Check()
    values = _validate(check, rule, None)
    check.done()
    row = DuplicateRule(id=new_id(), tenant_id=caller().tenant_id, version=1, **values)
    uow.session.add(row)
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        pb.DuplicateRuleCreated(duplicate_rule=rule_pb(row)),
        aggregate_type="duplicate_rule",
        aggregate_id=row.id,
        aggregate_version=1,
        action="created",
        after=snapshot(row),
    )
    return row


async def get(session: AsyncSession, rule_id: str) -> DuplicateRule:
    return await get_owned(session, DuplicateRule, "duplicate_rule", rule_id)


async def list_rules(
    session: AsyncSession, *, page_request: Any, record_type: int = 0
) -> tuple[list[DuplicateRule], str]:
    keys = [SortKey(DuplicateRule.id)]
    page = Page.of(page_request, len(keys))
    stmt = select(DuplicateRule).where(DuplicateRule.tenant_id == caller().tenant_id)
    if record_type:
        stmt = stmt.where(DuplicateRule.record_type == RECORD_TYPES.get(record_type, "?"))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update(
    uow: UnitOfWork, *, rule_id: str, expected_version: int, rule: pb.DuplicateRule, paths: list[str]
) -> DuplicateRule:
    unknown = [p for p in paths if p not in UPDATABLE]
    if unknown:
        raise InvalidArgument(
            f"these fields cannot be changed: {', '.join(unknown)}",
            field_errors=[FieldError(p, "cannot be changed") for p in unknown],
        )
    row = await get_owned(uow.session, DuplicateRule, "duplicate_rule", rule_id, lock=True)
    expect_version(row, expected_version)
    check = Check()
    values = _validate(check, rule, set(paths))
    check.done()
    before = snapshot(row)
    for name, value in values.items():
        setattr(row, name, value)
    if snapshot(row) != before:
        row.version += 1
        await uow.session.flush()
        await uow.session.refresh(row)
        uow.emit(
            pb.DuplicateRuleUpdated(duplicate_rule=rule_pb(row)),
            aggregate_type="duplicate_rule",
            aggregate_id=row.id,
            aggregate_version=row.version,
            action="updated",
            before=before,
            after=snapshot(row),
        )
    return row


async def delete(uow: UnitOfWork, *, rule_id: str, expected_version: int) -> None:
    row = await get_owned(uow.session, DuplicateRule, "duplicate_rule", rule_id, lock=True)
    expect_version(row, expected_version)
    message, before = rule_pb(row), snapshot(row)
    await uow.session.delete(row)
    uow.emit(
        pb.DuplicateRuleDeleted(duplicate_rule=message),
        aggregate_type="duplicate_rule",
        aggregate_id=rule_id,
        aggregate_version=row.version + 1,
        action="deleted",
        before=before,
    )


async def active_rules(session: AsyncSession, tenant_id: str, record_type: str) -> list[DuplicateRule]:
    return list(
        (
            await session.scalars(
                select(DuplicateRule)
                .where(
                    DuplicateRule.tenant_id == tenant_id,
                    DuplicateRule.record_type == record_type,
                    DuplicateRule.active.is_(True),
                )
                .order_by(DuplicateRule.id)
            )
        ).all()
    )
