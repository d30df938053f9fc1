"""`make bench`: every performance figure of the project, each a ratio against a baseline in the same run.

    make bench                     # all of them
    make bench BENCH="gateway events"

Each bench module has `async def run(*, admin_dsn, nats_url) -> dict`. Prints one JSON document and writes it
to bench-results/latest.json. Runs against CRM_TEST_POSTGRES_URL / CRM_TEST_NATS_URL when set, else against
embedded PostgreSQL and NATS (testcontainers when Docker is there). Sizes: CRM_BENCH_ACCOUNTS,
CRM_BENCH_IMPORT_ROWS, CRM_BENCH_ACCOUNTS_PRELOAD, CRM_BENCH_ACCOUNTS_IMPORT_ROWS, CRM_BENCH_ACCOUNTS_REFUSED_ROWS,
CRM_BENCH_OPPORTUNITIES (see each module); CRM_BENCH_IMPORT_PARTS picks contacts and/or accounts imports.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from crm_kit import infra

BENCHES = ["gateway", "events", "memory", "customers_lists", "customers_import", "sales"]


async def main(names: list[str]) -> dict[str, object]:
    results: dict[str, object] = {}
    work = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    try:
        with infra.provide(work) as (admin_dsn, nats_url, source):
            await infra.wait_for_postgres(admin_dsn)
            results["infra"] = source
            for name in names:
                try:
                    module = importlib.import_module(f"tests.bench.{name}")
                except ModuleNotFoundError:
                    results[name] = {"skipped": "no such bench yet"}
                    continue
                started = time.monotonic()
                print(f"bench: {name}…", file=sys.stderr, flush=True)
                results[name] = await module.run(admin_dsn=admin_dsn, nats_url=nats_url)
                print(f"bench: {name} done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def save(results: dict[str, object]) -> None:
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(text)


if __name__ == "__main__":
    save(asyncio.run(main(sys.argv[1:] or BENCHES)))
