"""Temporary files are bounded (issue 10, item 10): an upload reserves its room in the spool (CRM_SPOOL_DIR,
CRM_SPOOL_MAX_BYTES) before it is received, waits its turn while other files hold the room, gets a 429 with
Retry-After past the wait and a 413 when it is larger than the whole spool; the import's own spooled copy, the
dry run and the run hold room too, and everything is given back afterwards."""

from __future__ import annotations

import asyncio

from tests.gateway.conftest import assert_problem
from tests.sales.helpers import bearer, team
from tests.sales.test_lead_import_through_gateway import csv_file, finished


async def test_uploads_and_imports_hold_room_in_the_spool_and_give_it_back(api, identity, monkeypatch):
    from crm_gateway import files
    from crm_kit import spool

    company, _ = await team(identity, 0)
    h = bearer(company.token)
    content = csv_file([["姓名", "手机"]] + [[f"线索{i}", f"1380000{i:04d}"] for i in range(2000)])
    room = spool.current()
    assert room.used == 0
    monkeypatch.setattr(room, "max_bytes", 4 * len(content))
    monkeypatch.setattr(files, "UPLOAD_SPOOL_WAIT_SECONDS", 0.5)

    # Larger than the whole spool: refused at once.
    big = csv_file([["姓名"]] + [[f"线索{i}" * 20] for i in range(2000)])
    assert len(big) > room.max_bytes
    assert_problem(await api.post("/api/v1/lead-imports", files={"file": ("big.csv", big)}, headers=h), 413)

    # The spool is full (other files): a 429 after the wait, with Retry-After.
    async with room.reserve(room.max_bytes - len(content) // 2):
        busy = await api.post("/api/v1/lead-imports", files={"file": ("a.csv", content)}, headers=h)
        assert_problem(busy, 429)
        assert busy.headers["retry-after"]

        # Room given back while the upload waits: it goes through.
        monkeypatch.setattr(files, "UPLOAD_SPOOL_WAIT_SECONDS", 10.0)
        upload = asyncio.create_task(
            api.post("/api/v1/lead-imports", files={"file": ("a.csv", content)}, headers=h)
        )
        await asyncio.sleep(0.5)
        assert not upload.done()
    up = await upload
    assert up.status_code == 201, up.text
    job = up.json()
    assert room.used == 0

    dry = await api.post(f"/api/v1/lead-imports/{job['id']}/dry-run", json={}, headers=h)
    assert dry.status_code == 200, dry.text
    assert room.used == 0
    started = await api.post(f"/api/v1/lead-imports/{job['id']}/start", json={}, headers=h)
    assert started.status_code == 202, started.text
    done = await finished(api, h, job["id"])
    assert done["status"] == "succeeded", done
    assert room.used == 0
