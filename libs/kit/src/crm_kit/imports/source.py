"""Reading an uploaded file: stored in PostgreSQL in chunks, spooled to a local temporary file for parsing, read
row by row (CSV with the csv module, XLSX with openpyxl in read-only mode), so memory stays flat whatever the
size. CSV encodings: UTF-8 (with or without BOM), else GB18030 (what Excel in China saves), detected once."""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sqlalchemy import select

from crm_kit.imports.models import ImportFileChunk

CHUNK_BYTES = 1 << 20
XLSX_MAGIC = b"PK\x03\x04"
MAX_COLUMNS = 200
MAX_CELL = 10_000


class BadFile(ValueError):
    """The file cannot be read as a whole (not a row's problem)."""


def detect_format(file_name: str, content_type: str, head: bytes) -> str:
    if (
        head.startswith(XLSX_MAGIC)
        or file_name.lower().endswith((".xlsx", ".xlsm"))
        or "spreadsheetml" in content_type
    ):
        return "xlsx"
    return "csv"


def detect_encoding(head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 4:  # a character cut at the end of the sample
            return "utf-8"
    return "gb18030"


async def chunks_of(db: Any, job_id: str) -> AsyncIterator[bytes]:
    """The stored file, chunk by chunk (one small query per chunk: never the whole file in memory)."""
    seq = 0
    while True:
        async with db.read() as session:
            data = await session.scalar(
                select(ImportFileChunk.data).where(
                    ImportFileChunk.job_id == job_id, ImportFileChunk.seq == seq
                )
            )
        if data is None:
            return
        yield bytes(data)
        seq += 1


@contextlib.asynccontextmanager
async def spooled(db: Any, job_id: str, suffix: str = "") -> AsyncIterator[str]:
    """The stored file as a local temporary file (path), removed afterwards."""
    fd, path = tempfile.mkstemp(prefix="crm-import-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks_of(db, job_id):
                out.write(chunk)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def read_rows(path: str, file_format: str, encoding: str = "utf-8") -> Iterator[list[str]]:
    """Every row of the file including the header, as lists of strings. Raises BadFile."""
    if file_format == "xlsx":
        yield from _xlsx_rows(path)
        return
    try:
        with open(path, encoding=encoding, newline="", errors="strict") as f:
            sample = f.read(64 * 1024)
            f.seek(0)
            try:
                dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|") if sample else csv.excel
            except csv.Error:
                dialect = csv.excel
            csv.field_size_limit(MAX_CELL * 10)
            yield from csv.reader(f, dialect)
    except UnicodeDecodeError as exc:
        raise BadFile(f"the file is not text in {encoding} (byte {exc.start})") from exc
    except csv.Error as exc:
        raise BadFile(f"the CSV cannot be read: {exc}") from exc


def _xlsx_rows(path: str) -> Iterator[list[str]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a broken file
        raise BadFile(f"the XLSX file cannot be opened: {exc}") from exc
    try:
        sheet = workbook.worksheets[0]
        for row in sheet.iter_rows(values_only=True):
            yield [_cell(v) for v in row]
    finally:
        workbook.close()


def header_of(path: str, file_format: str, encoding: str) -> list[str]:
    for row in read_rows(path, file_format, encoding):
        header = [c.strip() for c in row]
        while header and not header[-1]:
            header.pop()
        if not any(header):
            continue
        if len(header) > MAX_COLUMNS:
            raise BadFile(f"the file has {len(header)} columns; at most {MAX_COLUMNS} are read")
        seen: dict[str, int] = {}
        out = []
        for i, h in enumerate(header):
            name = h or f"column {i + 1}"
            if name in seen:
                seen[name] += 1
                name = f"{name} ({seen[name]})"
            else:
                seen[name] = 1
            out.append(name)
        return out
    raise BadFile("the file has no header row")


def data_rows(path: str, file_format: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(row number as a spreadsheet shows it, cells) for every data row after the header; blank rows skipped."""
    header_seen = False
    for number, row in enumerate(read_rows(path, file_format, encoding), start=1):
        if not header_seen:
            if any(c.strip() for c in row):
                header_seen = True
            continue
        if not any(c.strip() for c in row):
            continue
        yield number, row


def distinct_values(path: str, file_format: str, encoding: str, index: int, limit: int) -> set[str]:
    """The different non-empty values of one column (by position), trimmed; BadFile past `limit` of them.
    For what an import must look up before it runs (e.g. the owners a file names)."""
    values: set[str] = set()
    for _, row in data_rows(path, file_format, encoding):
        value = row[index].strip() if index < len(row) else ""
        if value and value not in values:
            values.add(value)
            if len(values) > limit:
                raise BadFile(f"the column names more than {limit} different values")
    return values
