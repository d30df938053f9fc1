"""The tenant's sales settings: the letterhead (company name in Chinese and English, address, phone, tax
number, logo) printed at the top of quote and contract PDFs. One row per tenant; a tenant without one gets an
empty letterhead."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import settings_pb2 as pb
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.validation import Check
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import caller, to_message

TEXT_FIELDS = {
    "company_name": 300,
    "company_name_en": 300,
    "address": 500,
    "address_en": 500,
    "phone": 50,
    "tax_number": 50,
}
MAX_LOGO = 256 * 1024
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}


async def get(session: AsyncSession, tenant_id: str) -> models.SalesSettings:
    row = await session.get(models.SalesSettings, tenant_id)
    return row or models.SalesSettings(
        tenant_id=tenant_id,
        **dict.fromkeys(TEXT_FIELDS, ""),
        logo=None,
        logo_content_type="",
        logo_sha256="",
        version=0,
    )


def settings_pb(row: models.SalesSettings, *, with_logo: bool = True) -> pb.SalesSettings:
    return to_message(
        row, pb.SalesSettings, logo=(row.logo or b"") if with_logo else b"", version=row.version or 0
    )


def _audited(row: models.SalesSettings) -> dict[str, Any]:
    return {**{f: getattr(row, f) or "" for f in TEXT_FIELDS}, "logo_sha256": row.logo_sha256 or ""}


def _logo_type(check: Check, logo: bytes) -> str:
    """The logo's media type, when it is a PNG or JPEG image the PDF renderer can read."""
    kind = next((t for magic, t in IMAGE_TYPES.items() if logo.startswith(magic)), None)
    if len(logo) > MAX_LOGO:
        check.fail("logo", f"is larger than {MAX_LOGO // 1024} KiB")
        return ""
    if kind is None:
        check.fail("logo", "must be a PNG or JPEG image")
        return ""
    from fpdf import FPDF

    try:  # the very code that draws it on the PDFs
        doc = FPDF()
        doc.add_page()
        doc.image(io.BytesIO(logo), h=10)
    except Exception:
        check.fail("logo", "cannot be read as an image")
        return ""
    return kind


async def update(uow: UnitOfWork, request: pb.UpdateSalesSettingsRequest) -> models.SalesSettings:
    tenant_id = caller().tenant_id
    paths = set(request.update_mask.paths)
    row = await uow.session.get(models.SalesSettings, tenant_id, with_for_update=True)
    if row is None:
        row = await get(uow.session, tenant_id)
        uow.session.add(row)
    expect_version(row, request.expected_version)
    src = request.settings
    check = Check()
    values: dict[str, Any] = {}
    for field, max_len in TEXT_FIELDS.items():
        if field in paths:
            value = getattr(src, field).strip()
            check.length(field, value, max_len=max_len)
            values[field] = value
    if "logo" in paths:
        logo = bytes(src.logo)
        kind = _logo_type(check, logo) if logo else ""
        values.update(
            logo=logo or None,
            logo_content_type=kind,
            logo_sha256=hashlib.sha256(logo).hexdigest() if logo else "",
        )
    for p in sorted(paths - set(TEXT_FIELDS) - {"logo"}):
        check.fail(p, "cannot be changed")
    check.done()
    before = _audited(row)
    for key, value in values.items():
        setattr(row, key, value)
    after = _audited(row)
    if after == before and row.version:
        return row
    row.version = (row.version or 0) + 1
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.SalesSettingsUpdated(settings=settings_pb(row, with_logo=False)),
        aggregate_type="sales_settings",
        aggregate_id=tenant_id,
        aggregate_version=row.version,
        action="updated",
        before=before,
        after=after,
    )
    return row
