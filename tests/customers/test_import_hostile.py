"""Hostile import files (issue 10, item 3a): a sheet declaring a huge dimension, a zip-bomb shared-strings part, a
row numbered past the limit, more rows than the limit. Each is refused with a clear 400 (or its job fails with the
reason), for every import target the service registers, and the service keeps answering other requests within
their usual time meanwhile. The files are built here with zipfile, a few KB each."""

from __future__ import annotations

import asyncio
import io
import re
import statistics
import time
import zipfile

import grpc
import pytest
from crm.customers.v1 import data_quality_pb2 as dq
from crm.customers.v1 import data_quality_pb2_grpc
from crm_kit.imports import source
from openpyxl import Workbook

from tests.customers.helpers import sign_up
from tests.customers.test_import import csv_bytes, run_to_end, upload


@pytest.fixture(scope="session")
async def data(customers_service):
    async with grpc.aio.insecure_channel(customers_service.address) as channel:
        yield data_quality_pb2_grpc.CustomersDataServiceStub(channel)


def _targets():
    """Every import the customers service registers, with a header that fills its required fields."""
    from crm_customers.domain.imports.importers import IMPORTERS, TARGET_PB

    return [(TARGET_PB[t], list(i.vocabulary.required) or ["name"]) for t, i in IMPORTERS.items()]


def _xlsx(header: list[str], *, dimension: str = "", far_row: int = 0, shared_strings_bomb: int = 0) -> bytes:
    """A real workbook (openpyxl), its parts then rewritten as an attacker would."""
    wb = Workbook()
    wb.active.append(header)
    wb.active.append(["x"] * len(header))
    plain = io.BytesIO()
    wb.save(plain)
    out = io.BytesIO()
    with (
        zipfile.ZipFile(plain) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst,
    ):
        for entry in src.infolist():
            data = src.read(entry)
            if entry.filename == "xl/worksheets/sheet1.xml":
                text = data.decode()
                if dimension:
                    text = re.sub(r'<dimension ref="[^"]*"', f'<dimension ref="{dimension}"', text)
                if far_row:
                    text = text.replace(
                        "</sheetData>",
                        f'<row r="{far_row}"><c r="A{far_row}" t="n"><v>1</v></c></row></sheetData>',
                    )
                data = text.encode()
            if entry.filename == "[Content_Types].xml" and shared_strings_bomb:
                data = data.replace(
                    b"</Types>",
                    b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-'
                    b'officedocument.spreadsheetml.sharedStrings+xml"/></Types>',
                )
            if entry.filename == "xl/_rels/workbook.xml.rels" and shared_strings_bomb:
                data = data.replace(
                    b"</Relationships>",
                    b'<Relationship Id="rIdSst" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                    b'relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>',
                )
            dst.writestr(entry.filename, data)
        if shared_strings_bomb:  # millions of strings, unpacked about 1000:1
            with dst.open("xl/sharedStrings.xml", "w") as part:
                part.write(
                    b'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/'
                    b'spreadsheetml/2006/main">'
                )
                chunk = b"<si><t>a</t></si>" * 65536
                for _ in range(shared_strings_bomb // 65536):
                    part.write(chunk)
                part.write(b"</sst>")
    return out.getvalue()


def _hostile(header: list[str]) -> list[tuple[str, bytes, str]]:
    """(what, file, the words the refusal names)."""
    width = len(header)
    many = [header] + [["x"] * width for _ in range(source.MAX_ROWS + 5)]
    return [
        ("declared dimension A1:XFD4000", _xlsx(header, dimension="A1:XFD4000"), "declares"),
        ("declared 1,048,576 rows", _xlsx(header, dimension="A1:T1048576"), "declares"),
        ("zip-bomb shared strings", _xlsx(header, shared_strings_bomb=5 << 20), "XLSX"),
        ("a row numbered 1,048,576", _xlsx(header, far_row=1_048_576), "rows"),
        ("more CSV rows than the limit", csv_bytes(many), "rows"),
    ]


async def _outcome(call):
    try:
        return None, await call
    except grpc.aio.AioRpcError as exc:
        return exc, None


async def _probe(data, company, job_id) -> float:
    start = time.perf_counter()
    await data.GetImport(dq.GetImportRequest(id=job_id), metadata=company.md)
    return time.perf_counter() - start


async def test_hostile_files_are_refused_and_the_service_keeps_answering(identity, data, monkeypatch):
    monkeypatch.setattr(source, "MAX_ROWS", 2000)  # the same check as at 1,000,000, with a small file
    company = await sign_up(identity)
    plain = await upload(data, company, csv_bytes([["name"], ["x"]]), name="small.csv")
    baseline = [await _probe(data, company, plain.id) for _ in range(20)]
    usual = statistics.median(baseline)

    for target, header in _targets():
        for what, content, words in _hostile(header):
            done = asyncio.Event()
            latencies: list[float] = []

            async def probe(done=done, latencies=latencies):
                while not done.is_set():
                    latencies.append(await _probe(data, company, plain.id))
                    await asyncio.sleep(0.02)

            prober = asyncio.create_task(probe())
            try:
                name = "hostile.csv" if content[:2] != b"PK" else "hostile.xlsx"
                refused, job = await _outcome(
                    upload(data, company, content, target=target, name=name, chunk=64 << 10)
                )
                if refused is None:  # the header reads: the dry run and the run meet the rest of the file
                    refused, _ = await _outcome(
                        data.DryRunImport(dq.DryRunImportRequest(id=job.id), metadata=company.md)
                    )
                    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)
                    failed = await run_to_end(data, company, job.id)
                    assert failed.status == dq.JOB_STATUS_FAILED and words in failed.error, (what, failed)
                    assert failed.rows_done == 0 or failed.rows_done <= source.MAX_ROWS
            finally:
                done.set()
                await prober
            assert refused is not None, what
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, refused.details())
            assert words in refused.details(), (what, refused.details())
            # Other requests answered within their usual time meanwhile (generous: a loaded 2-core machine).
            assert latencies and max(latencies) < max(1.5, 30 * usual), (what, usual, max(latencies))
