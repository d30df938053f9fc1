"""Streamed spreadsheet writers (exports, error reports): rows in, bytes out, memory flat whatever the number
of rows.

CSV is written chunk by chunk (UTF-8 with a BOM, so Excel shows Chinese correctly). XLSX uses openpyxl's
write-only mode, which spools rows to a temporary file; the finished workbook is then streamed from disk. Both
live in the spool (`crm_kit.spool`), their room reserved as the rows come."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
from collections.abc import AsyncIterator
from typing import Any

from crm_kit import spool

CHUNK = 256 * 1024
# What an XLSX export reserves in the spool: per cell, its XML plus its text (UTF-8), in steps.
CELL_XML_BYTES = 50
RESERVE_STEP = 4 << 20
SPOOL_WAIT_SECONDS = 30.0
# Cells Excel would run as formulas: prefixed with a quote (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


class CsvWriter:
    content_type = "text/csv; charset=utf-8"
    extension = "csv"

    async def stream(self, rows: AsyncIterator[list[Any]]) -> AsyncIterator[bytes]:
        buffer = io.StringIO()
        out = csv.writer(buffer)
        buffer.write("\ufeff")
        async for row in rows:
            out.writerow([safe_cell(v) for v in row])
            if buffer.tell() >= CHUNK:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue().encode()


class XlsxWriter:
    content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    extension = "xlsx"

    async def stream(self, rows: AsyncIterator[list[Any]]) -> AsyncIterator[bytes]:
        from openpyxl import Workbook

        # The sheet spills to a temporary file in the spool as rows come, then the workbook is saved beside it:
        # room for both is reserved as the rows come (see crm_kit.spool; past the budget, a 429).
        async with spool.current().reserve(0, wait=SPOOL_WAIT_SECONDS) as room:
            workbook = Workbook(write_only=True)
            sheet = workbook.create_sheet()
            n, pending = 0, 0
            try:
                async for row in rows:
                    cells = [safe_cell(v) for v in row]
                    sheet.append(cells)
                    pending += sum(CELL_XML_BYTES + 3 * len(str(v)) for v in cells if v is not None)
                    n += 1
                    if pending >= RESERVE_STEP:
                        await room.grow(pending)
                        pending = 0
                    if n % 2000 == 0:
                        await asyncio.sleep(0)
                await room.grow(pending)
                await room.grow(room.bytes)  # the saved workbook beside it: at most the sheet again
            except BaseException:
                _discard(sheet)
                raise
            fd, path = spool.mkstemp(prefix="crm-export-", suffix=".xlsx")
            os.close(fd)
            try:
                await asyncio.to_thread(workbook.save, path)
                with open(path, "rb") as f:  # noqa: ASYNC230 - a local temp file, read in 256 KiB steps
                    while chunk := f.read(CHUNK):
                        yield chunk
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _discard(sheet: Any) -> None:
    """Remove the sheet's spilled rows of an export that stops before its save (openpyxl would keep the file
    until the process exits)."""
    if getattr(sheet, "_writer", None) is None:
        return
    with contextlib.suppress(Exception):
        sheet.close()  # ends the row stream and closes the file
    with contextlib.suppress(Exception):
        sheet._writer.cleanup()  # removes it
