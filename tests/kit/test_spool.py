"""The spool (crm_kit.spool): every temporary file lives in the declared directory under the declared budget
(issue 10, item 10)."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import tempfile

import pytest
from crm_kit import sheets, spool
from crm_kit.errors import InvalidArgument, TooManyRequests

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def test_room_is_reserved_waited_for_and_given_back():
    room = spool.Spool(max_bytes=1000)
    async with room.reserve(600):
        with pytest.raises(TooManyRequests):
            async with room.reserve(500, wait=0.2):
                pass
        waiting = asyncio.create_task(room.reserve(500, wait=5).__aenter__())
        await asyncio.sleep(0.3)
        assert not waiting.done() and room.used == 600
    await waiting
    assert room.used == 500
    with pytest.raises(InvalidArgument):  # larger than the whole spool: never
        await room.reserve(1001).__aenter__()


async def test_an_xlsx_export_holds_room_as_its_rows_come_and_gives_it_back(monkeypatch, tmp_path):
    async def rows(n):
        for i in range(n):
            yield [f"客户{i}", i, "x" * 100]

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    room = spool.Spool(str(tmp_path), max_bytes=1_000_000)
    monkeypatch.setattr(spool, "_current", room)
    monkeypatch.setattr(sheets, "RESERVE_STEP", 10_000)
    monkeypatch.setattr(sheets, "SPOOL_WAIT_SECONDS", 0)
    out = b"".join([c async for c in sheets.XlsxWriter().stream(rows(300))])
    assert out.startswith(b"PK") and room.used == 0
    with pytest.raises(TooManyRequests):  # 5,000 such rows do not fit in 1 MB (sheet, then workbook)
        [c async for c in sheets.XlsxWriter().stream(rows(5000))]
    assert room.used == 0
    assert list(tmp_path.iterdir()) == []  # no file left behind, finished or not


def test_configure_points_every_temporary_file_at_the_spool(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setattr(spool, "_current", spool.current())
    configured = spool.configure(str(tmp_path / "spool"), 5 << 20)
    assert configured.directory == str(tmp_path / "spool") and configured.max_bytes == 5 << 20
    assert tempfile.gettempdir() == str(tmp_path / "spool")  # where Starlette's and openpyxl's files go
    with tempfile.NamedTemporaryFile() as f:
        assert pathlib.Path(f.name).parent == tmp_path / "spool"
    _, path = spool.mkstemp("t-")
    assert pathlib.Path(path).parent == tmp_path / "spool"


def test_no_code_makes_a_temporary_file_outside_the_spool():
    """Every module of the services and the kit that makes temporary files does it through crm_kit.spool (the
    kit's dev stack's embedded database excepted: it is not a service)."""
    allowed = {"libs/kit/src/crm_kit/spool.py", "libs/kit/src/crm_kit/infra.py"}
    users = set()
    for path in [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if "tempfile" in names:
                users.add(str(path.relative_to(ROOT)))
    assert users <= allowed, users - allowed
    callers = set()
    for path in [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py")]:
        text = path.read_text()
        if "spool.mkstemp(" in text:
            callers.add(str(path.relative_to(ROOT)))
            assert ".reserve(" in text or "spooled(" in text, path  # room reserved where files are made
    assert callers == {"libs/kit/src/crm_kit/sheets.py", "libs/kit/src/crm_kit/imports/source.py"}
