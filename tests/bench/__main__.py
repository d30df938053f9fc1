"""`make bench`: every performance figure of the project, each a ratio against a baseline in the same run.

Prints one JSON document and writes it to bench-results/latest.json. Runs against CRM_TEST_POSTGRES_URL /
CRM_TEST_NATS_URL when set, else against embedded PostgreSQL and NATS (testcontainers when Docker is there).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from crm_kit import infra

from tests.bench import events, gateway


async def main() -> dict[str, object]:
    results: dict[str, object] = {}
    work = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    with infra.provide(work) as (admin_dsn, nats_url, source):
        await infra.wait_for_postgres(admin_dsn)
        results["infra"] = source
        results["gateway"] = await gateway.measure(admin_dsn, nats_url, work)
        results["events"] = await events.run(admin_dsn=admin_dsn, nats_url=nats_url)
    return results


def save(results: dict[str, object]) -> None:
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(text)


if __name__ == "__main__":
    save(asyncio.run(main()))
    sys.exit(0)
