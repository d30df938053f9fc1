"""Streamed spreadsheet writers (exports, error reports): rows in, bytes out, memory flat whatever the number
of rows.

CSV is written chunk by chunk (UTF-8 with a BOM, so Excel shows Chinese correctly). XLSX uses openpyxl's
write-only mode, which spools rows to a temporary file; the finished workbook is then streamed from disk."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

CHUNK = 256 * 1024
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

        workbook = Workbook(write_only=True)
        sheet = workbook.create_sheet()
        n = 0
        async for row in rows:
            sheet.append([safe_cell(v) for v in row])
            n += 1
            if n % 2000 == 0:
                await asyncio.sleep(0)
        fd, path = tempfile.mkstemp(prefix="crm-export-", suffix=".xlsx")
        os.close(fd)
        try:
            await asyncio.to_thread(workbook.save, path)
            with open(path, "rb") as f:  # noqa: ASYNC230 - a local temp file, read in 256 KiB steps
                while chunk := f.read(CHUNK):
                    yield chunk
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
