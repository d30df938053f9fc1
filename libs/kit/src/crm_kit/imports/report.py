"""The error report of an import: one line per problem — row, column, value, reason — read page by page, or
downloaded as CSV (UTF-8 with a BOM, so Excel shows the Chinese) or XLSX, streamed whatever its length."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_kit.db import Database
from crm_kit.imports.models import ImportErrorRow, ImportJob
from crm_kit.paging import Page, SortKey
from crm_kit.sheets import CsvWriter, XlsxWriter

REPORT_HEADER = {"en": ("row", "column", "value", "reason"), "zh-CN": ("行", "列", "值", "原因")}
CSV_TYPE = CsvWriter.content_type
XLSX_TYPE = XlsxWriter.content_type


@dataclass
class ReportFile:
    file_name: str
    content_type: str
    chunks: AsyncIterator[bytes]


async def list_errors(
    session: AsyncSession, *, job_id: str, page_request: Any
) -> tuple[list[ImportErrorRow], str]:
    keys = [SortKey(ImportErrorRow.row), SortKey(ImportErrorRow.id)]
    page = Page.of(page_request, len(keys))
    stmt = select(ImportErrorRow).where(ImportErrorRow.job_id == job_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda e: [e.row, e.id])


async def error_rows(db: Database, job_id: str) -> AsyncIterator[tuple[int, str, str, str]]:
    """Every error of the job in row order, 5,000 per query."""
    after = (0, 0)
    while True:
        async with db.read() as session:
            rows = (
                await session.execute(
                    select(
                        ImportErrorRow.row,
                        ImportErrorRow.id,
                        ImportErrorRow.column,
                        ImportErrorRow.value,
                        ImportErrorRow.reason,
                    )
                    .where(
                        ImportErrorRow.job_id == job_id,
                        (ImportErrorRow.row > after[0])
                        | ((ImportErrorRow.row == after[0]) & (ImportErrorRow.id > after[1])),
                    )
                    .order_by(ImportErrorRow.row, ImportErrorRow.id)
                    .limit(5000)
                )
            ).all()
        if not rows:
            return
        for r in rows:
            yield r.row, r.column, r.value, r.reason
        after = (rows[-1].row, rows[-1].id)


def error_report(
    db: Database,
    *,
    job: ImportJob,
    xlsx: bool,
    locale: str = "",
    hidden_columns: frozenset[str] = frozenset(),
) -> ReportFile:
    """The report as a streamed file, its header row in the locale's language ("zh-CN", else English); the
    values of `hidden_columns` (mapped to fields hidden from the reader) left out."""
    stem = job.file_name.rsplit(".", 1)[0]
    header = REPORT_HEADER.get(locale or "en", REPORT_HEADER["en"])
    name = f"{stem}-errors.{'xlsx' if xlsx else 'csv'}"
    # The sheets' writers: cells that a spreadsheet would run as formulas are quoted (CSV injection).
    writer = XlsxWriter() if xlsx else CsvWriter()
    return ReportFile(
        name,
        XLSX_TYPE if xlsx else CSV_TYPE,
        writer.stream(_as_lists(header, error_rows(db, job.id), hidden_columns)),
    )


async def _as_lists(
    header: Any, rows: AsyncIterator[Any], hidden: frozenset[str]
) -> AsyncIterator[list[Any]]:
    yield list(header)
    async for row, column, value, reason in rows:
        yield [row, column, "" if column in hidden else value, reason]
