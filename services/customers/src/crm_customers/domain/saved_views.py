"""Saved views: a named list (filters, sort, columns, keyword) per user, optionally shared with the owner's
department. A list request names a view with `view_id`: its filters apply, plus the request's own; the
request's sort and keyword win when given."""

from __future__ import annotations

from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import events_pb2
from crm_kit.db import UnitOfWork
from crm_kit.errors import FieldError, InvalidArgument, PermissionDenied
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models
from crm_customers.domain.common import RECORD_TYPES, caller, expect_version, get_owned, ts

UPDATABLE = ("name", "filter", "sort", "columns", "query", "shared")
MAX_FILTERS = 20
MAX_COLUMNS = 100


def saved_view_pb(v: models.SavedView) -> pb.SavedView:
    return pb.SavedView(
        id=v.id,
        record_type=RECORD_TYPES.number(v.record_type),
        name=v.name,
        filter=list(v.filter or []),
        sort=v.sort,
        columns=list(v.columns or []),
        query=v.query,
        shared=v.shared,
        owner_id=v.owner_id,
        department_id=v.department_id,
        created_at=ts(v.created_at),
        updated_at=ts(v.updated_at),
        version=v.version,
    )


def snapshot(v: models.SavedView) -> dict[str, Any]:
    return {k: (list(getattr(v, k)) if isinstance(getattr(v, k), list) else getattr(v, k)) for k in UPDATABLE}


def _readable() -> Any:
    """Mine, or shared within my department."""
    principal = caller()
    V = models.SavedView
    mine = V.owner_id == principal.actor_id
    if principal.department_id:
        return or_(mine, and_(V.shared.is_(True), V.department_id == principal.department_id))
    return mine


def _validate(check: Check, v: models.SavedView) -> None:
    check.required("name", v.name)
    check.length("name", v.name, max_len=200)
    check.length("sort", v.sort, max_len=300)
    check.length("query", v.query, max_len=200)
    if len(v.filter) > MAX_FILTERS:
        check.fail("filter", f"at most {MAX_FILTERS} filters")
    for i, f in enumerate(v.filter):
        if f.count(":") < 1 or len(f) > 500:
            check.fail(f"filter[{i}]", "must be field:op:value")
    if len(v.columns) > MAX_COLUMNS:
        check.fail("columns", f"at most {MAX_COLUMNS} columns")


def _copy(v: models.SavedView, src: pb.SavedView, paths: list[str]) -> None:
    for p in paths:
        value = getattr(src, p)
        if p in ("filter", "columns"):
            value = [x.strip() for x in value if x.strip()]
        elif isinstance(value, str):
            value = value.strip()
        setattr(v, p, value)


async def _check_filters(session: AsyncSession, v: models.SavedView) -> None:
    """The filters and sort must be valid for the record type (the same parser as the lists)."""
    from crm_customers.domain import accounts, contacts
    from crm_customers.domain import custom_fields as cf
    from crm_customers.domain import query as q

    defs = await cf.definitions(session, v.tenant_id, v.record_type)
    fields = accounts.fields_for(defs) if v.record_type == "account" else contacts.fields_for(defs)
    from crm_kit.policy import Decision

    everything = Decision(v.record_type, "read", True, scope=4)
    q.parse_filters(fields, list(v.filter), everything)
    q.parse_sort(fields, v.sort, everything)


async def create(uow: UnitOfWork, src: pb.SavedView) -> models.SavedView:
    principal = caller()
    record_type = RECORD_TYPES.name(src.record_type)
    check = Check()
    if record_type not in ("account", "contact"):
        check.fail("record_type", "must be account or contact")
    v = models.SavedView(
        id=new_id(),
        tenant_id=principal.tenant_id,
        record_type=record_type,
        owner_id=principal.actor_id,
        department_id=principal.department_id,
        version=1,
        filter=[],
        columns=[],
        sort="",
        query="",
        shared=False,
    )
    _copy(v, src, list(UPDATABLE))
    _validate(check, v)
    check.done()
    await _check_filters(uow.session, v)
    uow.session.add(v)
    await uow.session.flush()
    await uow.session.refresh(v)
    uow.emit(
        events_pb2.SavedViewCreated(saved_view=saved_view_pb(v)),
        aggregate_type="saved_view",
        aggregate_id=v.id,
        aggregate_version=1,
        action="created",
        after=snapshot(v),
    )
    return v


async def get(session: AsyncSession, view_id: str) -> models.SavedView:
    v = await get_owned(session, models.SavedView, "saved_view", view_id)
    principal = caller()
    if v.owner_id != principal.actor_id and not (
        v.shared and principal.department_id and v.department_id == principal.department_id
    ):
        from crm_kit.errors import not_found

        raise not_found("saved_view", view_id)
    return v


async def list_views(
    session: AsyncSession, request: pb.ListSavedViewsRequest
) -> tuple[list[models.SavedView], str]:
    keys = [SortKey(models.SavedView.id)]
    page = Page.of(request.page, 1)
    stmt = select(models.SavedView).where(models.SavedView.tenant_id == caller().tenant_id, _readable())
    if request.record_type:
        stmt = stmt.where(models.SavedView.record_type == RECORD_TYPES.name(request.record_type))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda v: [v.id])


async def _owned_for_write(session: AsyncSession, view_id: str) -> models.SavedView:
    v = await get(session, view_id)
    if v.owner_id != caller().actor_id:
        raise PermissionDenied("only the owner changes a saved view", reason="not_view_owner")
    return v


async def update(uow: UnitOfWork, request: pb.UpdateSavedViewRequest) -> models.SavedView:
    paths = list(request.update_mask.paths)
    unknown = [p for p in paths if p not in UPDATABLE]
    if unknown or not paths:
        raise InvalidArgument(
            f"these fields cannot be changed: {', '.join(unknown) or '(none named)'}",
            field_errors=[FieldError(p, "cannot be changed") for p in unknown],
        )
    v = await _owned_for_write(uow.session, request.id)
    expect_version(v, request.expected_version)
    before = snapshot(v)
    _copy(v, request.saved_view, paths)
    check = Check()
    _validate(check, v)
    check.done()
    await _check_filters(uow.session, v)
    if snapshot(v) == before:
        return v
    v.version += 1
    await uow.session.flush()
    await uow.session.refresh(v)
    uow.emit(
        events_pb2.SavedViewUpdated(saved_view=saved_view_pb(v)),
        aggregate_type="saved_view",
        aggregate_id=v.id,
        aggregate_version=v.version,
        action="updated",
        before=before,
        after=snapshot(v),
    )
    return v


async def delete(uow: UnitOfWork, view_id: str, expected_version: int) -> None:
    v = await _owned_for_write(uow.session, view_id)
    expect_version(v, expected_version)
    before = snapshot(v)
    await uow.session.delete(v)
    await uow.session.flush()
    uow.emit(
        events_pb2.SavedViewDeleted(saved_view=saved_view_pb(v)),
        aggregate_type="saved_view",
        aggregate_id=v.id,
        aggregate_version=v.version + 1,
        action="deleted",
        before=before,
    )


async def apply(session: AsyncSession, request: Any, record_type: str) -> tuple[str, list[str], str]:
    """The keyword, filters and sort of a list request, with its saved view (if any) folded in."""
    query, filters = request.q, list(request.filter)
    sort = getattr(request, "sort", "")
    if not request.view_id:
        return query, filters, sort
    v = await get(session, request.view_id)
    if v.record_type != record_type:
        raise InvalidArgument.for_field("view_id", f"is a view of {v.record_type}s")
    return query or v.query, [*v.filter, *filters], sort or v.sort
