"""Benchmark: importing N contacts from a CSV file with duplicate rules on, against a raw PostgreSQL COPY of the
same rows into the same table with the same indexes, and the peak memory of the service doing the import.

    CRM_BENCH_IMPORT_ROWS=1000000 uv run python -m tests.bench.customers_import   # prints a JSON report

In one run, on one PostgreSQL and NATS (CRM_TEST_POSTGRES_URL / CRM_TEST_NATS_URL when set, else the
embedded ones):

1. identity and customers run as real processes (`crm_kit.devstack.Stack`); a tenant signs up and sets three
   duplicate rules on contacts (phone, e-mail, person + company), all "skip" on import;
2. a CSV of N contacts (Chinese names, mobile numbers in mixed formats, e-mails; 1% repeat an earlier phone, so
   the rules have work to do) is uploaded through the gRPC upload stream, and the import is started and
   followed until it succeeds. `import_seconds` is start → succeeded (what a user waits for once the file
   is up); `upload_seconds` is the upload;
3. the imported rows are copied out (`COPY ... TO`, binary), the table is emptied (TRUNCATE keeps every index),
   and the same rows are loaded back with a raw `COPY ... FROM` (`copy_seconds`).

Figures: `ratio` = copy_seconds / import_seconds (the import's throughput as a share of raw COPY's; target
>= 0.5), `ratio_with_upload` the same counting the upload, and `peak_rss_mb`: the customers process's peak
resident memory (VmHWM) over the whole run (target < 300 MB); files over 8 MiB are parsed in a child process
of the service, whose own peak is `converter_process_peak_rss_mb`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from crm.customers.v1 import customers_pb2, data_quality_pb2, data_quality_pb2_grpc, duplicates_pb2
from crm.identity.v1 import identity_pb2, identity_pb2_grpc
from crm_kit import infra
from crm_kit.devstack import SERVICES, Stack

DEFAULT_ROWS = 1_000_000
PASSWORD = "bench password 123"
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
)
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国志明小红晓东海燕玉兰春梅"
TARGET_RATIO = 0.5
TARGET_RSS_MB = 300


def rows_wanted() -> int:
    return int(os.environ.get("CRM_BENCH_IMPORT_ROWS", DEFAULT_ROWS))


def write_csv(path: Path, n: int, seed: int = 7) -> None:
    """N contacts; every 100th row repeats an earlier row's phone (in another format)."""
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("姓名,手机,邮箱,职位\n")
        for i in range(n):
            name = rnd.choice(SURNAMES) + rnd.choice(GIVEN) + (rnd.choice(GIVEN) if i % 3 else "")
            k = rnd.randrange(i) if i and i % 100 == 0 else i
            mobile = f"13{k % 10}{k:08d}"[:11]
            phone = f"+86 {mobile[:3]}-{mobile[3:7]}-{mobile[7:]}" if i % 2 else mobile
            f.write(f"{name},{phone},user{i}@example.com,{'经理' if i % 5 == 0 else ''}\n")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _token(identity: Any, email: str) -> tuple[tuple[str, str], ...]:
    token = await identity.CreateToken(identity_pb2.CreateTokenRequest(email=email, password=PASSWORD))
    return (("authorization", f"Bearer {token.token.access_token}"),)


async def run(admin_dsn: str, nats_url: str) -> dict[str, Any]:
    n = rows_wanted()
    work = Path(tempfile.mkdtemp(prefix="crm-bench-import-"))
    stack = Stack(
        admin_dsn=admin_dsn,
        nats_url=nats_url,
        data_dir=work,
        database_prefix=f"benchimp{uuid.uuid4().hex[:6]}",
        log_dir=work / "logs",
        env={"CRM_EVENTS_NAMESPACE": f"benchimp{uuid.uuid4().hex[:6]}", "CRM_LOG_LEVEL": "WARNING"},
    )
    by_name = {a.name: a for a in SERVICES}
    csv_path = work / "contacts.csv"
    try:
        identity_process = stack.start(by_name["identity"])
        stack.wait_serving(identity_process)
        customers_process = stack.start(by_name["customers"])
        stack.wait_serving(customers_process)
        generated = time.perf_counter()
        await asyncio.to_thread(write_csv, csv_path, n)
        generate_seconds = time.perf_counter() - generated

        async with (
            grpc.aio.insecure_channel(identity_process.address) as ich,
            grpc.aio.insecure_channel(
                customers_process.address, options=[("grpc.max_send_message_length", 8 << 20)]
            ) as cch,
        ):
            identity = identity_pb2_grpc.IdentityServiceStub(ich)
            data = data_quality_pb2_grpc.CustomersDataServiceStub(cch)
            email = f"bench.{uuid.uuid4().hex[:8]}@example.com"
            signed = await identity.SignUp(
                identity_pb2.SignUpRequest(
                    tenant_name="压测公司", email=email, password=PASSWORD, name="测试"
                )
            )
            md = await _token(identity, email)
            for match in (
                duplicates_pb2.DUPLICATE_MATCH_PHONE,
                duplicates_pb2.DUPLICATE_MATCH_EMAIL,
                duplicates_pb2.DUPLICATE_MATCH_PERSON_NAME_AND_COMPANY,
            ):
                await data.CreateDuplicateRule(
                    data_quality_pb2.CreateDuplicateRuleRequest(
                        duplicate_rule=data_quality_pb2.DuplicateRule(
                            name=f"bench {match}",
                            record_type=customers_pb2.RECORD_TYPE_CONTACT,
                            match=match,
                            on_import=data_quality_pb2.IMPORT_DUPLICATE_ACTION_SKIP,
                        )
                    ),
                    metadata=md,
                )

            async def parts():  # type: ignore[no-untyped-def]
                yield data_quality_pb2.UploadImportFileRequest(
                    header=data_quality_pb2.UploadImportFileRequest.Header(
                        file=data_quality_pb2.FileInfo(file_name="contacts.csv"),
                        target=data_quality_pb2.IMPORT_TARGET_CONTACTS,
                    )
                )
                with open(csv_path, "rb") as f:  # noqa: ASYNC230 - a local file, read in 1 MiB steps
                    while chunk := f.read(1 << 20):
                        yield data_quality_pb2.UploadImportFileRequest(chunk=chunk)

            uploaded = time.perf_counter()
            job = (await data.UploadImportFile(parts(), metadata=md, timeout=3600)).import_job
            upload_seconds = time.perf_counter() - uploaded

            started = time.perf_counter()
            await data.StartImport(data_quality_pb2.StartImportRequest(id=job.id), metadata=md)
            token_at = time.monotonic()
            while True:
                await asyncio.sleep(0.5)
                if time.monotonic() - token_at > 240:  # access tokens live 5 minutes
                    md, token_at = await _token(identity, email), time.monotonic()
                job = (
                    await data.GetImport(data_quality_pb2.GetImportRequest(id=job.id), metadata=md)
                ).import_job
                if job.status not in (
                    data_quality_pb2.JOB_STATUS_QUEUED,
                    data_quality_pb2.JOB_STATUS_RUNNING,
                ):
                    break
            import_seconds = time.perf_counter() - started
            if job.status != data_quality_pb2.JOB_STATUS_SUCCEEDED:
                raise RuntimeError(f"the import ended {job.status}: {job.error}")
            rss = peak_rss_mb(customers_process.popen.pid)

        # The raw COPY of the same rows into the same table with the same indexes.
        dsn = infra.sqlalchemy_url(admin_dsn, f"{stack.database_prefix}_customers").replace(
            "postgresql+asyncpg://", "postgresql://"
        )
        conn = await asyncpg.connect(dsn)
        try:
            dump = work / "contacts.bin"
            await conn.copy_from_query(
                "SELECT * FROM contacts WHERE tenant_id = $1",
                signed.tenant.id,
                output=str(dump),
                format="binary",
            )
            imported = await conn.fetchval(
                "SELECT count(*) FROM contacts WHERE tenant_id = $1", signed.tenant.id
            )
            stats = json.loads(
                await conn.fetchval("SELECT stats FROM import_jobs WHERE id = $1", job.id) or "{}"
            )
            converter_rss = stats.get("converter_peak_rss_kib", 0) / 1024
            await conn.execute("TRUNCATE contacts")
            await conn.execute("CHECKPOINT")
            copied = time.perf_counter()
            await conn.copy_to_table("contacts", source=str(dump), format="binary")
            copy_seconds = time.perf_counter() - copied
        finally:
            await conn.close()
        ratio = copy_seconds / import_seconds
        return {
            "rows": n,
            "rows_imported": imported,
            "rows_skipped_as_duplicates": job.rows_skipped,
            "rows_failed": job.rows_failed,
            "csv_mb": round(csv_path.stat().st_size / 1e6, 1),
            "generate_seconds": round(generate_seconds, 1),
            "upload_seconds": round(upload_seconds, 2),
            "import_seconds": round(import_seconds, 2),
            "copy_seconds": round(copy_seconds, 2),
            "import_rows_per_s": round(n / import_seconds),
            "copy_rows_per_s": round(imported / copy_seconds),
            "ratio": round(ratio, 3),
            "ratio_with_upload": round(copy_seconds / (import_seconds + upload_seconds), 3),
            "peak_rss_mb": round(rss, 1),
            # Files over 8 MiB are parsed and converted in a child process of the service: its own peak.
            "converter_process_peak_rss_mb": round(converter_rss, 1),
            "target": f"ratio >= {TARGET_RATIO} and peak_rss_mb < {TARGET_RSS_MB}",
            "met": ratio >= TARGET_RATIO
            and rss < TARGET_RSS_MB
            and converter_rss < TARGET_RSS_MB
            and imported == n - job.rows_skipped,
        }
    finally:
        stack.stop_all()
        stack.drop_databases()
        await infra.delete_streams(nats_url, stack.env["CRM_EVENTS_NAMESPACE"])
        shutil.rmtree(work, ignore_errors=True)


async def _main() -> dict[str, Any]:
    with infra.provide(Path(tempfile.mkdtemp(prefix="crm-bench-"))) as (admin_dsn, nats_url, _source):
        await infra.wait_for_postgres(admin_dsn)
        return await run(admin_dsn, nats_url)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main()), indent=2, ensure_ascii=False))
