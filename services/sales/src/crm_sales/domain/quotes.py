"""Quotes (报价): line items priced from a price book, line and overall discounts, tax and totals to the cent;
versions; submission through the tenant's discount approval; acceptance."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import quotes_pb2 as pb
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import Conflict, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision, Text
from crm_kit.validation import LOCALES, Check, updatable
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain import approvals, pricing
from crm_sales.domain.common import (
    People,
    caller,
    currency_code,
    enum_name,
    get_owned,
    parse_date,
    parse_decimal,
    snapshot,
    to_message,
)

STATUS = pb.QuoteStatus.DESCRIPTOR
DRAFT_FIELDS = (
    "title",
    "customer_name",
    "contact_id",
    "lines",
    "discount_percent",
    "valid_until",
    "locale",
    "notes",
    "terms",
)
AUDITED = (
    "number",
    "revision",
    "title",
    "customer_name",
    "status",
    "currency",
    "discount_percent",
    "list_total",
    "discount_total",
    "tax_total",
    "total",
    "valid_until",
)
MAX_LINES = 500
# Fields computed from others, hidden whenever one of those is (`Decision.redact_message`): a hidden discount or
# price also hides the amounts it could be read back from.
LINE_DERIVED = {
    "lines.list_amount": ("lines.unit_price",),
    "lines.discount_amount": ("lines.unit_price", "lines.discount_percent"),
    "lines.net_amount": ("lines.unit_price", "lines.discount_percent"),
    "lines.tax_amount": ("lines.unit_price", "lines.discount_percent"),
}
# The fields a quote's discount comes from.
DISCOUNT = ("effective_discount_percent", "discount_percent", "lines.discount_percent")
DERIVED = {
    **LINE_DERIVED,
    "list_total": ("lines.unit_price",),
    "overall_discount_amount": ("discount_percent",),
    "discount_total": ("discount_percent", "lines.discount_percent"),
    "effective_discount_percent": ("discount_percent", "lines.discount_percent"),
}


def quote_pb(q: models.Quote, decision: Decision | None = None) -> pb.Quote:
    msg = to_message(
        q,
        pb.Quote,
        discount_percent=format(q.discount_percent.normalize(), "f"),
        effective_discount_percent=format(q.effective_discount_percent.quantize(Decimal("0.01")), "f"),
    )
    return decision.redact_message(msg, DERIVED) if decision else msg


def visible(decision: Decision) -> Any:
    return decision.row_filter(
        caller(), owner_column=models.Quote.owner_id, department_column=models.Quote.department_id
    )


async def next_number(session: AsyncSession, tenant_id: str, name: str) -> int:
    """The tenant's next number for `name`, handed out once even under concurrency (the row is locked by the
    UPDATE until the transaction ends)."""
    await session.execute(_upsert_counter(tenant_id, name))
    value = await session.scalar(
        update(models.Counter)
        .where(models.Counter.tenant_id == tenant_id, models.Counter.name == name)
        .values(value=models.Counter.value + 1)
        .returning(models.Counter.value)
    )
    return int(value or 0)


def _upsert_counter(tenant_id: str, name: str) -> Any:
    from sqlalchemy.dialects.postgresql import insert

    return insert(models.Counter).values(tenant_id=tenant_id, name=name, value=0).on_conflict_do_nothing()


async def _price_lines(
    session: AsyncSession,
    check: Check,
    inputs: list[pb.QuoteLineInput],
    book: models.PriceBook | None,
    locale: str,
) -> list[pricing.Line]:
    if len(inputs) > MAX_LINES:
        check.fail("lines", f"at most {MAX_LINES} lines")
        return []
    ids = {line.product_id for line in inputs if line.product_id}
    for i, line in enumerate(inputs):
        check.uuid(f"lines[{i}].product_id", line.product_id, required=True)
    if check.errors:
        return []
    tenant_id = caller().tenant_id
    products = {
        p.id: p
        for p in (
            await session.scalars(
                select(models.Product).where(
                    models.Product.id.in_(ids), models.Product.tenant_id == tenant_id
                )
            )
        ).all()
    }
    prices: dict[str, Decimal] = {}
    if book is not None and ids:
        prices = {
            e.product_id: e.unit_price.normalize()
            for e in (
                await session.scalars(
                    select(models.PriceBookEntry).where(
                        models.PriceBookEntry.price_book_id == book.id,
                        models.PriceBookEntry.product_id.in_(ids),
                    )
                )
            ).all()
        }
    out = []
    for i, line in enumerate(inputs):
        product = products.get(line.product_id)
        if product is None:
            check.fail(f"lines[{i}].product_id", "no such product")
            continue
        quantity = parse_decimal(check, f"lines[{i}].quantity", line.quantity, required=True, places=4)
        if quantity is not None and quantity <= 0:
            check.fail(f"lines[{i}].quantity", "must be more than 0")
        unit_price = (
            parse_decimal(check, f"lines[{i}].unit_price", line.unit_price, places=4)
            if line.unit_price
            else prices.get(product.id)
        )
        if unit_price is None and not line.unit_price:
            check.fail(f"lines[{i}].unit_price", "the price book has no price for this product; give one")
        discount = parse_decimal(
            check,
            f"lines[{i}].discount_percent",
            line.discount_percent or "0",
            maximum=Decimal(100),
            places=4,
        )
        check.length(f"lines[{i}].description", line.description, max_len=2000)
        if quantity is None or unit_price is None or discount is None:
            continue
        name = product.name_en if locale == "en" and product.name_en else product.name
        out.append(
            pricing.Line(
                product_id=product.id,
                product_code=product.code,
                description=line.description.strip() or name,
                unit=product.unit,
                quantity=quantity,
                unit_price=unit_price,
                discount_percent=discount,
                tax_rate=product.tax_rate,
            )
        )
    return out


def _apply(q: models.Quote, priced: pricing.Priced) -> None:
    q.lines = priced.lines
    q.list_total = priced.list_total
    q.subtotal = priced.subtotal
    q.overall_discount_amount = priced.overall_discount_amount
    q.discount_total = priced.discount_total
    q.effective_discount_percent = priced.effective_discount_percent
    q.tax_total = priced.tax_total
    q.total = priced.total


async def _book(session: AsyncSession, book_id: str) -> models.PriceBook | None:
    if not book_id:
        return None
    try:
        return await get_owned(session, models.PriceBook, "price_book", book_id)
    except Exception:
        raise InvalidArgument.for_field("price_book_id", "no such price book") from None


def _emit(uow: UnitOfWork, payload: Any, q: models.Quote, action: str, before=None, after=None) -> None:  # type: ignore[no-untyped-def]
    uow.emit(
        payload,
        aggregate_type="quote",
        aggregate_id=q.id,
        aggregate_version=q.version,
        action=action,
        before=before,
        after=after,
    )


async def create(
    uow: UnitOfWork, request: pb.CreateQuoteRequest, *, people: People, now: dt.datetime
) -> models.Quote:
    principal = caller()
    session = uow.session
    check = Check()
    locale = request.locale or "zh-CN"
    check.one_of("locale", locale, LOCALES)
    for f in ("opportunity_id", "account_id", "contact_id"):
        check.uuid(f, getattr(request, f))
    check.length("title", request.title, max_len=300)
    check.length("customer_name", request.customer_name, max_len=300)
    check.length("notes", request.notes, max_len=10_000)
    check.length("terms", request.terms, max_len=10_000)
    book = await _book(session, request.price_book_id)
    overall = parse_decimal(
        check, "discount_percent", request.discount_percent or "0", maximum=Decimal(100), places=4
    )
    valid_until = parse_date(check, "valid_until", request.valid_until)
    lines = await _price_lines(session, check, list(request.lines), book, locale)
    currency = book.currency if book else "CNY"
    opportunity = None
    if request.opportunity_id and not check.errors:
        opportunity = await session.scalar(
            select(models.Opportunity).where(
                models.Opportunity.id == request.opportunity_id,
                models.Opportunity.tenant_id == principal.tenant_id,
            )
        )
        if opportunity is None:
            check.fail("opportunity_id", "no such opportunity")
    await people.check_record(check, "account_id", "account", request.account_id)
    await people.check_record(check, "contact_id", "contact", request.contact_id)
    check.done()
    number = f"Q-{now:%Y%m%d}-{await next_number(session, principal.tenant_id, 'quote'):04d}"
    q = models.Quote(
        id=new_id(),
        tenant_id=principal.tenant_id,
        number=number,
        revision=1,
        title=request.title.strip(),
        opportunity_id=request.opportunity_id,
        account_id=request.account_id or (opportunity.account_id if opportunity else ""),
        contact_id=request.contact_id or (opportunity.contact_id if opportunity else ""),
        customer_name=request.customer_name.strip(),
        price_book_id=book.id if book else "",
        currency=currency_code(Check(), "currency", currency),
        status="draft",
        discount_percent=overall,
        valid_until=valid_until,
        locale=locale,
        notes=request.notes,
        terms=request.terms,
        owner_id=principal.actor_id,
        department_id=principal.department_id or None,
        version=1,
    )
    _apply(q, pricing.price(lines, overall or Decimal(0)))
    session.add(q)
    await session.flush()
    await session.refresh(q)
    _emit(uow, events_pb2.QuoteCreated(quote=quote_pb(q)), q, "created", after=snapshot(q, AUDITED))
    return q


async def get(
    session: AsyncSession, decision: Decision, quote_id: str, *, lock: bool = False
) -> models.Quote:
    return await get_owned(session, models.Quote, "quote", quote_id, lock=lock, visible=visible(decision))


async def list_quotes(
    session: AsyncSession, decision: Decision, request: pb.ListQuotesRequest
) -> tuple[list[models.Quote], str]:
    keys = [SortKey(models.Quote.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Quote).where(models.Quote.tenant_id == caller().tenant_id, visible(decision))
    if request.opportunity_id:
        stmt = stmt.where(models.Quote.opportunity_id == request.opportunity_id)
    if request.number:
        stmt = stmt.where(models.Quote.number == request.number)
    if request.status:
        stmt = stmt.where(models.Quote.status == enum_name(STATUS, request.status))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update_draft(
    uow: UnitOfWork, decision: Decision, request: pb.UpdateQuoteRequest, *, people: People
) -> models.Quote:
    paths = list(request.update_mask.paths)
    updatable(paths, DRAFT_FIELDS)
    q = await get(uow.session, decision, request.id, lock=True)
    expect_version(q, request.expected_version)
    if q.status != "draft":
        raise Conflict("only a draft quote can change; revise it for a new version", reason="quote_not_draft")
    src = request.quote
    check = Check()
    if "locale" in paths:
        check.one_of("locale", src.locale, LOCALES)
    locale = src.locale if "locale" in paths and src.locale else q.locale
    if "contact_id" in paths:
        check.uuid("contact_id", src.contact_id)
        if src.contact_id != q.contact_id:
            await people.check_record(check, "contact_id", "contact", src.contact_id)
    overall = q.discount_percent
    if "discount_percent" in paths:
        overall = parse_decimal(
            check, "discount_percent", src.discount_percent or "0", maximum=Decimal(100), places=4
        )
    valid_until = (
        parse_date(check, "valid_until", src.valid_until) if "valid_until" in paths else q.valid_until
    )
    lines = None
    if "lines" in paths:
        book = await _book(uow.session, q.price_book_id)
        lines = await _price_lines(uow.session, check, list(src.lines), book, locale)
    for f in ("title", "customer_name"):
        if f in paths:
            check.length(f, getattr(src, f), max_len=300)
    check.done()
    before = snapshot(q, AUDITED)
    for f in ("title", "customer_name", "contact_id", "notes", "terms"):
        if f in paths:
            setattr(q, f, getattr(src, f).strip())
    q.locale, q.valid_until, q.discount_percent = locale, valid_until, overall or Decimal(0)
    if lines is None:
        lines = [
            pricing.Line(
                product_id=line["product_id"],
                product_code=line["product_code"],
                description=line["description"],
                unit=line["unit"],
                quantity=Decimal(line["quantity"]),
                unit_price=Decimal(line["unit_price"]),
                discount_percent=Decimal(line["discount_percent"]),
                tax_rate=Decimal(line["tax_rate"]),
            )
            for line in q.lines
        ]
    _apply(q, pricing.price(lines, q.discount_percent))
    q.version += 1
    await uow.session.flush()
    await uow.session.refresh(q)
    _emit(uow, events_pb2.QuoteUpdated(quote=quote_pb(q)), q, "updated", before, snapshot(q, AUDITED))
    return q


async def _set_status(uow: UnitOfWork, q: models.Quote, status: str) -> None:
    previous = q.status
    before = snapshot(q, AUDITED)
    q.status = status
    q.version += 1
    await uow.session.flush()
    await uow.session.refresh(q)
    _emit(
        uow,
        events_pb2.QuoteStatusChanged(quote=quote_pb(q), previous_status=previous),
        q,
        status,
        before,
        snapshot(q, AUDITED),
    )


async def revise(uow: UnitOfWork, decision: Decision, quote_id: str) -> models.Quote:
    """A new draft version with the same number; the current version is superseded."""
    old = await get(uow.session, decision, quote_id, lock=True)
    if old.status in ("superseded", "accepted"):
        raise Conflict(f"a {old.status} quote cannot be revised", reason="quote_not_revisable")
    latest = await uow.session.scalar(
        select(models.Quote.revision)
        .where(models.Quote.tenant_id == old.tenant_id, models.Quote.number == old.number)
        .order_by(models.Quote.revision.desc())
        .limit(1)
    )
    if latest != old.revision:
        raise Conflict("only the latest version can be revised", reason="quote_not_latest")
    new = models.Quote(
        **{
            c.key: getattr(old, c.key)
            for c in models.Quote.__table__.columns
            if c.key not in ("id", "created_at", "updated_at", "version", "status", "revision", "approval_id")
        },
        id=new_id(),
        revision=old.revision + 1,
        status="draft",
        approval_id="",
        version=1,
    )
    uow.session.add(new)
    await _set_status(uow, old, "superseded")
    await uow.session.flush()
    await uow.session.refresh(new)
    _emit(uow, events_pb2.QuoteCreated(quote=quote_pb(new)), new, "revised", after=snapshot(new, AUDITED))
    return new


async def submit(
    uow: UnitOfWork, decision: Decision, quote_id: str
) -> tuple[models.Quote, models.Approval | None]:
    q = await get(uow.session, decision, quote_id, lock=True)
    if q.status != "draft":
        raise Conflict(f"a {q.status} quote cannot be submitted", reason="quote_not_draft")
    if not q.lines:
        raise InvalidArgument.for_field("lines", "a quote needs at least one line")
    policy = await approvals.policy(uow.session, q.tenant_id)
    priced = pricing.Priced(list_total=q.list_total, discount_total=q.discount_total)
    if not priced.exceeds(policy.discount_threshold_percent):
        await _set_status(uow, q, "approved")
        return q, None
    if not policy.steps:
        raise Conflict(
            "the discount needs approval but the tenant names no approvers", reason="approval_policy_missing"
        )
    threshold = policy.discount_threshold_percent.normalize()
    approval = await approvals.request_approval(
        uow,
        object_type="quote",
        object_id=q.id,
        reason=Text.join(
            "折扣 ",
            Text.of(f"{q.effective_discount_percent:.2f}% ", *DISCOUNT),
            f"超过阈值 {threshold}% / discount ",
            Text.of(f"{q.effective_discount_percent:.2f}% ", *DISCOUNT),
            f"is above the threshold of {threshold}%",
        ),
        steps=[list(s) for s in policy.steps],
    )
    q.approval_id = approval.id
    await _set_status(uow, q, "pending_approval")
    return q, approval


async def on_approval(uow: UnitOfWork, quote_id: str, outcome: str, now: dt.datetime) -> None:
    q = await uow.session.get(models.Quote, quote_id, with_for_update=True)
    if q is not None and q.status == "pending_approval":
        await _set_status(uow, q, outcome)


approvals.OUTCOMES["quote"] = on_approval


async def respond(uow: UnitOfWork, decision: Decision, quote_id: str, *, accept: bool) -> models.Quote:
    q = await get(uow.session, decision, quote_id, lock=True)
    if q.status != "approved":
        raise Conflict("only an approved quote can be accepted or declined", reason="quote_not_approved")
    await _set_status(uow, q, "accepted" if accept else "declined")
    return q
