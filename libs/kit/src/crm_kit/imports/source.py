"""Reading an uploaded file: stored in PostgreSQL in chunks, spooled to a local temporary file for parsing, read
row by row (CSV with the csv module, XLSX with openpyxl's streaming sheet parser), so memory stays flat whatever
the size. CSV encodings: UTF-8 (with or without BOM), else GB18030 (what Excel in China saves), detected once.

Every file is untrusted: the limits below are declared once here and checked before the work they bound (an
XLSX's zip entries by their declared sizes and compression ratio, its sheet's declared dimension and its shared
strings before openpyxl reads anything; rows, columns and line lengths as they are read). Only the rows and cells
present in the file are produced: a sheet declaring A1:XFD1048576, or a row numbered 1048576, costs nothing.
Reading runs off the event loop (a thread, or the converter's child process); see `pipeline` and `jobs`."""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import os
import re
import zipfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sqlalchemy import select

from crm_kit import spool
from crm_kit.imports.models import ImportFileChunk

CHUNK_BYTES = 1 << 20
XLSX_MAGIC = b"PK\x03\x04"

# ---- the limits of what a file may hold (declared once: everything below derives from these)
MAX_FILE_BYTES = 2 << 30  # as uploaded
MAX_ROWS = 1_000_000  # data rows (Excel's own sheet has 1,048,576 rows)
MAX_COLUMNS = 200  # named in the header
MAX_CELL = 10_000  # characters of one cell
MAX_SHEET_COLUMNS = 1_000  # columns a sheet may declare or fill; empty cells further right are ignored
MAX_LINE_CHARS = MAX_COLUMNS * MAX_CELL  # one CSV line
MAX_XLSX_ENTRIES = 1_000  # parts in the zip
MAX_XLSX_UNPACKED_BYTES = 4 << 30  # all parts, by their declared uncompressed sizes
MAX_XLSX_RATIO = 100  # uncompressed : compressed, for parts over 1 MiB (zip bombs are thousands to one)
MAX_SHARED_STRINGS_BYTES = 64 << 20  # openpyxl reads this part whole into memory
MAX_SHARED_STRINGS = 2_000_000


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
async def spooled(
    db: Any, job_id: str, suffix: str = "", *, size: int, wait: float = 30.0
) -> AsyncIterator[str]:
    """The stored file (`size` bytes) as a local temporary file (path) in the spool, its size reserved there
    (see `crm_kit.spool`: waits up to `wait` seconds for room, then 429), removed afterwards."""
    async with spool.current().reserve(size, wait=wait):
        fd, path = spool.mkstemp(prefix="crm-import-", suffix=suffix)
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


def read_rows(path: str, file_format: str, encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
    """(row number as a spreadsheet shows it, cells as strings) for every row present in the file, header
    included, within the limits above. Raises BadFile."""
    rows = _xlsx_rows(path) if file_format == "xlsx" else _csv_rows(path, encoding)
    for number, row in rows:
        if number > MAX_ROWS + 1:
            raise BadFile(f"the file has more than {MAX_ROWS} rows; split it into smaller files")
        yield number, row


def _bounded_lines(f: Any) -> Iterator[str]:
    while line := f.readline(MAX_LINE_CHARS + 1):
        if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
            raise BadFile(f"a line of the file is longer than {MAX_LINE_CHARS} characters")
        yield line


def _csv_rows(path: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    try:
        with open(path, encoding=encoding, newline="", errors="strict") as f:
            sample = f.read(64 * 1024)
            f.seek(0)
            try:
                dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|") if sample else csv.excel
            except csv.Error:
                dialect = csv.excel
            csv.field_size_limit(MAX_CELL * 10)
            yield from enumerate(csv.reader(_bounded_lines(f), dialect), start=1)
    except UnicodeDecodeError as exc:
        raise BadFile(f"the file is not text in {encoding} (byte {exc.start})") from exc
    except csv.Error as exc:
        raise BadFile(f"the CSV cannot be read: {exc}") from exc


_COUNT = re.compile(rb'uniqueCount="(\d+)"')


def check_xlsx(path: str) -> None:
    """The zip's declared sizes, before anything is unpacked. Python's zipfile never unpacks more than an entry
    declares, so these bound what openpyxl reads."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadFile(f"the XLSX file cannot be opened: {exc}") from exc
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_XLSX_ENTRIES:
            raise BadFile(f"the XLSX file has {len(entries)} parts; at most {MAX_XLSX_ENTRIES} are read")
        total = 0
        for entry in entries:
            total += entry.file_size
            if entry.file_size > 1 << 20 and entry.file_size > MAX_XLSX_RATIO * max(entry.compress_size, 1):
                raise BadFile(
                    f"the XLSX part {entry.filename} unpacks to {entry.file_size} bytes from "
                    f"{entry.compress_size}: more than {MAX_XLSX_RATIO} times its size"
                )
            if entry.filename.lower().endswith("sharedstrings.xml"):
                if entry.file_size > MAX_SHARED_STRINGS_BYTES:
                    raise BadFile(
                        f"the XLSX shared strings unpack to {entry.file_size} bytes; at most "
                        f"{MAX_SHARED_STRINGS_BYTES >> 20} MiB are read"
                    )
                with archive.open(entry) as part:
                    found = _COUNT.search(part.read(4096))
                if found and int(found.group(1)) > MAX_SHARED_STRINGS:
                    raise BadFile(
                        f"the XLSX file declares {int(found.group(1))} shared strings; at most "
                        f"{MAX_SHARED_STRINGS} are read"
                    )
        if total > MAX_XLSX_UNPACKED_BYTES:
            raise BadFile(
                f"the XLSX file unpacks to {total} bytes; at most {MAX_XLSX_UNPACKED_BYTES >> 20} MiB"
            )


def _xlsx_rows(path: str) -> Iterator[tuple[int, list[str]]]:
    from openpyxl import load_workbook
    from openpyxl.worksheet._reader import WorkSheetParser

    check_xlsx(path)
    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a broken file
        raise BadFile(f"the XLSX file cannot be opened: {exc}") from exc
    try:
        if not workbook.worksheets:
            raise BadFile("the XLSX file has no sheet")
        sheet = workbook.worksheets[0]
        rows, columns = sheet.max_row or 0, sheet.max_column or 0  # as declared (<dimension ref=...>)
        if rows > MAX_ROWS + 1 or columns > MAX_SHEET_COLUMNS:
            raise BadFile(
                f"the sheet declares {rows} rows and {columns} columns; at most {MAX_ROWS} rows and "
                f"{MAX_SHEET_COLUMNS} columns are read"
            )
        # openpyxl's own row iterator pads every row to the declared dimension and fills missing rows: the
        # sheet's parser gives only the cells the file holds.
        with sheet._get_source() as src:
            parser = WorkSheetParser(
                src,
                sheet._shared_strings,
                data_only=True,
                epoch=workbook.epoch,
                date_formats=workbook._date_formats,
                timedelta_formats=workbook._timedelta_formats,
            )
            for number, cells in parser.parse():
                if number > MAX_ROWS + 1:
                    raise BadFile(f"the file has more than {MAX_ROWS} rows; split it into smaller files")
                row: list[str] = []
                for cell in cells:
                    value, column = cell["value"], cell["column"]
                    if value is None:
                        continue
                    if column > MAX_SHEET_COLUMNS:
                        raise BadFile(f"row {number} has a value past column {MAX_SHEET_COLUMNS}")
                    if column > len(row):
                        row.extend([""] * (column - len(row)))
                    row[column - 1] = _cell(value)
                yield number, row
    except BadFile:
        raise
    except Exception as exc:
        raise BadFile(f"the XLSX file cannot be read: {exc}") from exc
    finally:
        workbook.close()


def header_of(path: str, file_format: str, encoding: str) -> list[str]:
    for _, row in read_rows(path, file_format, encoding):
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
    for number, row in read_rows(path, file_format, encoding):
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
