"""Products (units, tax rates) and price books (per currency and customer group)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import quotes_pb2 as pb
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check, updatable
from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import (
    caller,
    currency_code,
    get_owned,
    parse_decimal,
    snapshot,
    to_message,
)

PRODUCT_FIELDS = ("code", "name", "name_en", "description", "unit", "tax_rate", "active")
BOOK_FIELDS = ("name", "currency", "customer_group", "active", "entries")


def product_pb(p: models.Product) -> pb.Product:
    return to_message(p, pb.Product, tax_rate=format(p.tax_rate.normalize(), "f"))


def _product_values(check: Check, src: Any, paths: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, top in (("code", 100), ("name", 300), ("name_en", 300), ("unit", 30), ("description", 5000)):
        if name in paths:
            value = getattr(src, name).strip()
            if name in ("code", "name"):
                check.required(name, value)
            check.length(name, value, max_len=top)
            out[name] = value
    if "tax_rate" in paths:
        out["tax_rate"] = parse_decimal(
            check, "tax_rate", src.tax_rate or "0", maximum=Decimal(100), places=4
        )
    if "active" in paths:
        out["active"] = src.active
    return out


async def create_product(uow: UnitOfWork, request: pb.CreateProductRequest) -> models.Product:
    check = Check()
    values = _product_values(check, request, set(PRODUCT_FIELDS) - {"active"})
    check.done()
    p = models.Product(id=new_id(), tenant_id=caller().tenant_id, active=True, version=1, **values)
    uow.session.add(p)
    await uow.session.flush()
    await uow.session.refresh(p)
    uow.emit(
        events_pb2.ProductChanged(product=product_pb(p)),
        aggregate_type="product",
        aggregate_id=p.id,
        aggregate_version=1,
        action="created",
        after=snapshot(p, PRODUCT_FIELDS),
    )
    return p


async def get_product(session: AsyncSession, product_id: str) -> models.Product:
    return await get_owned(session, models.Product, "product", product_id)


async def list_products(session: AsyncSession, request: pb.ListProductsRequest) -> tuple[list[Any], str]:
    keys = [SortKey(models.Product.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Product).where(models.Product.tenant_id == caller().tenant_id)
    if request.q:
        like = "%" + request.q.strip().replace("%", r"\%").replace("_", r"\_") + "%"
        stmt = stmt.where(
            or_(
                models.Product.name.ilike(like),
                models.Product.code.ilike(like),
                models.Product.name_en.ilike(like),
            )
        )
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update_product(uow: UnitOfWork, request: pb.UpdateProductRequest) -> models.Product:
    paths = list(request.update_mask.paths)
    updatable(paths, PRODUCT_FIELDS)
    p = await get_owned(uow.session, models.Product, "product", request.id, lock=True)
    expect_version(p, request.expected_version)
    check = Check()
    values = _product_values(check, request.product, set(paths))
    check.done()
    before = snapshot(p, PRODUCT_FIELDS)
    for k, v in values.items():
        setattr(p, k, v)
    after = snapshot(p, PRODUCT_FIELDS)
    if after == before:
        return p
    p.version += 1
    await uow.session.flush()
    await uow.session.refresh(p)
    uow.emit(
        events_pb2.ProductChanged(product=product_pb(p)),
        aggregate_type="product",
        aggregate_id=p.id,
        aggregate_version=p.version,
        action="updated",
        before=before,
        after=after,
    )
    return p


# ---------------------------------------------------------------- price books


async def entries_of(session: AsyncSession, book_id: str) -> list[models.PriceBookEntry]:
    return list(
        (
            await session.scalars(
                select(models.PriceBookEntry)
                .where(models.PriceBookEntry.price_book_id == book_id)
                .order_by(models.PriceBookEntry.product_id)
            )
        ).all()
    )


async def book_pb(session: AsyncSession, b: models.PriceBook) -> pb.PriceBook:
    entries = [
        pb.PriceBookEntry(product_id=e.product_id, unit_price=format(e.unit_price.normalize(), "f"))
        for e in await entries_of(session, b.id)
    ]
    return to_message(b, pb.PriceBook, entries=entries)


async def _entries(
    session: AsyncSession, check: Check, entries: list[pb.PriceBookEntry]
) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for i, e in enumerate(entries):
        check.uuid(f"entries[{i}].product_id", e.product_id, required=True)
        price = parse_decimal(check, f"entries[{i}].unit_price", e.unit_price, required=True, places=4)
        if e.product_id in out:
            check.fail(f"entries[{i}].product_id", "appears twice")
        if price is not None:
            out[e.product_id] = price
    if out and not check.errors:
        found = set(
            (
                await session.scalars(
                    select(models.Product.id).where(
                        models.Product.id.in_(list(out)), models.Product.tenant_id == caller().tenant_id
                    )
                )
            ).all()
        )
        for pid in sorted(set(out) - found):
            check.fail("entries", f"no such product: {pid}")
    return out


async def _write_entries(session: AsyncSession, book: models.PriceBook, prices: dict[str, Decimal]) -> None:
    await session.execute(delete(models.PriceBookEntry).where(models.PriceBookEntry.price_book_id == book.id))
    for pid, price in prices.items():
        session.add(
            models.PriceBookEntry(
                tenant_id=book.tenant_id, price_book_id=book.id, product_id=pid, unit_price=price
            )
        )


async def create_book(uow: UnitOfWork, request: pb.CreatePriceBookRequest) -> models.PriceBook:
    check = Check()
    check.required("name", request.name)
    check.length("name", request.name, max_len=200)
    currency = currency_code(check, "currency", request.currency)
    check.length("customer_group", request.customer_group, max_len=100)
    prices = await _entries(uow.session, check, list(request.entries))
    check.done()
    b = models.PriceBook(
        id=new_id(),
        tenant_id=caller().tenant_id,
        name=request.name.strip(),
        currency=currency,
        customer_group=request.customer_group.strip(),
        active=True,
        version=1,
    )
    uow.session.add(b)
    await uow.session.flush()
    await _write_entries(uow.session, b, prices)
    await uow.session.flush()
    await uow.session.refresh(b)
    message = await book_pb(uow.session, b)
    uow.emit(
        events_pb2.PriceBookChanged(price_book=message),
        aggregate_type="price_book",
        aggregate_id=b.id,
        aggregate_version=1,
        action="created",
        after={**snapshot(b, ("name", "currency", "customer_group")), "entries": len(prices)},
    )
    return b


async def get_book(session: AsyncSession, book_id: str) -> models.PriceBook:
    return await get_owned(session, models.PriceBook, "price_book", book_id)


async def list_books(session: AsyncSession, request: pb.ListPriceBooksRequest) -> tuple[list[Any], str]:
    keys = [SortKey(models.PriceBook.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.PriceBook).where(models.PriceBook.tenant_id == caller().tenant_id)
    if request.currency:
        stmt = stmt.where(models.PriceBook.currency == request.currency.upper())
    if request.customer_group:
        stmt = stmt.where(models.PriceBook.customer_group == request.customer_group)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update_book(uow: UnitOfWork, request: pb.UpdatePriceBookRequest) -> models.PriceBook:
    paths = list(request.update_mask.paths)
    updatable(paths, BOOK_FIELDS)
    b = await get_owned(uow.session, models.PriceBook, "price_book", request.id, lock=True)
    expect_version(b, request.expected_version)
    src = request.price_book
    check = Check()
    if "name" in paths:
        check.required("name", src.name)
    currency = currency_code(check, "currency", src.currency) if "currency" in paths else b.currency
    prices = await _entries(uow.session, check, list(src.entries)) if "entries" in paths else None
    check.done()
    before = await book_pb(uow.session, b)
    if "name" in paths:
        b.name = src.name.strip()
    if "customer_group" in paths:
        b.customer_group = src.customer_group.strip()
    if "active" in paths:
        b.active = src.active
    b.currency = currency
    if prices is not None:
        await _write_entries(uow.session, b, prices)
    b.version += 1
    await uow.session.flush()
    await uow.session.refresh(b)
    after = await book_pb(uow.session, b)
    uow.emit(
        events_pb2.PriceBookChanged(price_book=after),
        aggregate_type="price_book",
        aggregate_id=b.id,
        aggregate_version=b.version,
        action="updated",
        before={"name": before.name, "currency": before.currency, "entries": len(before.entries)},
        after={"name": after.name, "currency": after.currency, "entries": len(after.entries)},
    )
    return b
