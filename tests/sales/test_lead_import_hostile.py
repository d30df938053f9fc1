"""Hostile lead-import files through the public API (issue 10, item 3a): each is a 422 naming the limit, or a job
that fails with it, the owner e-mails' pre-read included; the gateway keeps answering as usual meanwhile."""

from __future__ import annotations

import asyncio
import statistics
import time

from crm_kit.imports import source

from tests.customers.test_import_hostile import _xlsx
from tests.sales.helpers import bearer, team
from tests.sales.test_lead_import_through_gateway import csv_file, finished

HEADER = ["姓名", "负责人邮箱"]


def _hostile() -> list[tuple[str, bytes, str]]:
    many = [HEADER] + [["线索", "x@example.com"] for _ in range(source.MAX_ROWS + 5)]
    return [
        ("declared dimension A1:XFD4000", _xlsx(HEADER, dimension="A1:XFD4000"), "declares"),
        ("zip-bomb shared strings", _xlsx(HEADER, shared_strings_bomb=5 << 20), "XLSX"),
        ("a row numbered 1,048,576", _xlsx(HEADER, far_row=1_048_576), "rows"),
        ("more CSV rows than the limit", csv_file(many), "rows"),
    ]


async def test_hostile_lead_files_are_refused_and_the_gateway_keeps_answering(api, identity, monkeypatch):
    monkeypatch.setattr(source, "MAX_ROWS", 2000)
    company, _ = await team(identity, 0)
    h = bearer(company.token)

    async def probe() -> float:
        start = time.perf_counter()
        r = await api.get("/api/v1/lead-imports", headers=h)
        assert r.status_code == 200, r.text
        return time.perf_counter() - start

    usual = statistics.median([await probe() for _ in range(15)])
    for what, content, words in _hostile():
        done = asyncio.Event()
        latencies: list[float] = []

        async def keep_probing(done=done, latencies=latencies):
            while not done.is_set():
                latencies.append(await probe())
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(keep_probing())
        try:
            name = "hostile.xlsx" if content[:2] == b"PK" else "hostile.csv"
            answer = await api.post("/api/v1/lead-imports", files={"file": (name, content)}, headers=h)
            if answer.status_code == 201:  # the header reads: the dry run meets the rest
                job = answer.json()
                answer = await api.post(f"/api/v1/lead-imports/{job['id']}/dry-run", json={}, headers=h)
                mapping = [{"column": "姓名", "field": "name"}]  # without the owner column: the run reads it
                started = await api.post(
                    f"/api/v1/lead-imports/{job['id']}/start", json={"mapping": mapping}, headers=h
                )
                assert started.status_code == 202, started.text
                failed = await finished(api, h, job["id"])
                assert failed["status"] == "failed" and words in failed["error"], (what, failed)
        finally:
            done.set()
            await prober
        assert answer.status_code == 422, (what, answer.text)
        assert words in answer.text, (what, answer.text)
        assert latencies and max(latencies) < max(1.5, 30 * usual), (what, usual, max(latencies))
