"""Customers list and search figures of `make bench`, each measured in the same run as its baseline:

(a) a filtered, sorted list page (province = 广东省, newest registered capital first) through the customers
    gRPC service (token check, policy, scope, conversion, roll-up counts), as a ratio of the very SQL
    statement the service ran, replayed directly with asyncpg (target ≤ 2.5);
(b) a page 900,000 rows deep (sorted by name, keyset cursor) the same way (target ≤ 2.5; with keyset pages
    it costs what the first page does);
    Beside (a), the floor: the same answer's bytes from a bare gRPC server (no token, policy, SQL or
    conversion), which any gRPC service pays on top of its SQL; (floor + SQL) / SQL is the best ratio reachable;
(c) keyword search p95 through the service over a mix of 2-character Chinese keywords, longer Chinese
    substrings, pinyin and mistyped Latin names (target < 100 ms).

N accounts (CRM_BENCH_ACCOUNTS, default 1,000,000) are written with COPY into the service's own table, with
its indexes dropped during the load and rebuilt after (what a bulk load does), and the search columns
computed by the service's own functions.

    uv run python -c "import asyncio; from tests.bench import customers_lists as b; \
        print(asyncio.run(b.run('postgresql://postgres@127.0.0.1:5432/postgres', 'nats://127.0.0.1:4222')))"
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import statistics
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from crm.common.v1 import paging_pb2
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc
from crm.identity.v1 import identity_pb2 as ipb
from crm.identity.v1 import identity_pb2_grpc
from crm_customers.app import SPEC as CUSTOMERS
from crm_customers.domain import search
from crm_customers.settings import CustomersSettings
from crm_identity.app import SPEC as IDENTITY
from crm_identity.settings import IdentitySettings
from crm_kit import infra, paging
from crm_kit.ids import new_id
from crm_kit.service import Service
from sqlalchemy import event

PASSWORD = "bench password 123"
PROVINCES = [
    "广东省",
    "浙江省",
    "江苏省",
    "北京市",
    "上海市",
    "四川省",
    "湖北省",
    "山东省",
    "福建省",
    "河南省",
]
CITIES = ["深圳", "杭州", "苏州", "北京", "上海", "成都", "武汉", "青岛", "厦门", "郑州"]
CHARS = list("华为兴达瑞恒泰丰盛鑫源宏远新辉腾飞科创联通信安康明阳光伟业汇通嘉和永昌金石天成博雅隆盈")
INDUSTRY = ["科技", "电子", "贸易", "机械", "医药", "物流", "软件", "能源", "材料", "食品"]
FORMS = ["有限公司", "股份有限公司", "有限责任公司", "集团有限公司"]
LATIN = [
    "zentrix",
    "alibrand",
    "novatek",
    "meridian",
    "solvera",
    "quantix",
    "orbital",
    "lumina",
    "vertex",
    "kinetic",
]
STAGES = ["prospect", "customer", "loyal", "at_risk", "churned"]


def _name(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return f"{rng.choice(LATIN).title()} {rng.choice(['Technologies', 'Trading', 'Systems'])} Co., Ltd."
    brand = rng.choice(CHARS) + rng.choice(CHARS) + (rng.choice(CHARS) if rng.random() < 0.5 else "")
    return f"{rng.choice(CITIES)}{brand}{rng.choice(INDUSTRY)}{rng.choice(FORMS)}"


def _rows(tenant_id: str, owner_id: str, n: int, seed: int = 7) -> Any:
    rng = random.Random(seed)
    base = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    for i in range(n):
        name = _name(rng)
        province = rng.choice(PROVINCES)
        created = base + dt.timedelta(seconds=i * 60)
        yield (
            new_id(),
            tenant_id,
            name,
            name.lower(),
            Decimal(rng.randrange(10_000, 1_000_000_000)) if rng.random() < 0.9 else None,
            province,
            rng.choice(CITIES),
            rng.choice(INDUSTRY),
            rng.choice(STAGES),
            owner_id,
            "",
            created,
            created,
            search.name_text(name),
            search.name_grams(name),
            f"86138{i:08d}",
            1,
        )


COLUMNS = [
    "id",
    "tenant_id",
    "name",
    "name_key",
    "registered_capital",
    "province",
    "city",
    "industry",
    "lifecycle_stage",
    "owner_id",
    "department_id",
    "created_at",
    "updated_at",
    "search_name",
    "search_grams",
    "search_extra",
    "version",
]


async def _fill(dsn: str, tenant_id: str, owner_id: str, n: int) -> float:
    """COPY n accounts with the table's indexes dropped, then rebuild them; returns seconds taken."""
    start = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'accounts' AND indexname <> 'pk_accounts'"
        )
        for ix in indexes:
            await conn.execute(f'DROP INDEX "{ix["indexname"]}"')
        batch: list[tuple[Any, ...]] = []
        for row in _rows(tenant_id, owner_id, n):
            batch.append(row)
            if len(batch) == 50_000:
                await conn.copy_records_to_table("accounts", records=batch, columns=COLUMNS)
                batch = []
        if batch:
            await conn.copy_records_to_table("accounts", records=batch, columns=COLUMNS)
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for ix in indexes:
            await conn.execute(ix["indexdef"])
        await conn.execute("VACUUM ANALYZE accounts")
    finally:
        await conn.close()
    return time.monotonic() - start


class Captured:
    """The statements one service call ran (SQL and parameters as sent to asyncpg)."""

    def __init__(self, engine: Any):
        self.statements: list[tuple[str, tuple[Any, ...]]] = []
        self.on = False
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if self.on:
            self.statements.append((statement, tuple(parameters or ())))

    async def capture(self, call: Any) -> tuple[str, tuple[Any, ...]]:
        """Run the call once and return its list query (the one ordering by the sort keys, with a LIMIT)."""
        self.statements.clear()
        self.on = True
        try:
            await call()
        finally:
            self.on = False
        lists = [
            (s, p) for s, p in self.statements if "FROM accounts" in s and "LIMIT" in s and "ORDER BY" in s
        ]
        return lists[0]


async def _timed(call: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _p(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def run(admin_dsn: str, nats_url: str) -> dict[str, Any]:
    n = int(os.environ.get("CRM_BENCH_ACCOUNTS", "1000000"))
    runs = int(os.environ.get("CRM_BENCH_RUNS", "200"))
    tag = uuid.uuid4().hex[:6]
    own_namespace = "CRM_EVENTS_NAMESPACE" not in os.environ
    os.environ.setdefault("CRM_EVENTS_NAMESPACE", f"bench{tag}")
    identity_db = f"bench{tag}_identity"
    customers_db = f"bench{tag}_customers"
    await infra.create_database(admin_dsn, identity_db)
    await infra.create_database(admin_dsn, customers_db)
    identity_url = infra.sqlalchemy_url(admin_dsn, identity_db)
    customers_url = infra.sqlalchemy_url(admin_dsn, customers_db)
    identity = Service(
        IDENTITY,
        IdentitySettings(
            environment="test",
            database_url=identity_url,
            nats_url=nats_url,
            grpc_host="127.0.0.1",
            grpc_port=0,
            migrate_on_start=True,
            data_dir=Path(f"/tmp/crm-bench-{tag}"),
        ),
    )
    await identity.start()
    customers = Service(
        CUSTOMERS,
        CustomersSettings(
            environment="test",
            database_url=customers_url,
            nats_url=nats_url,
            grpc_host="127.0.0.1",
            grpc_port=0,
            migrate_on_start=True,
            identity_service_addr=identity.address,
        ),
    )
    await customers.start()
    try:
        async with (
            grpc.aio.insecure_channel(identity.address) as ich,
            grpc.aio.insecure_channel(customers.address) as cch,
        ):
            ids = identity_pb2_grpc.IdentityServiceStub(ich)
            stub = customers_pb2_grpc.CustomersServiceStub(cch)
            email = f"bench.{tag}@example.com"
            signed = await ids.SignUp(
                ipb.SignUpRequest(
                    tenant_name="基准测试有限公司", email=email, password=PASSWORD, name="王小明"
                )
            )
            dsn = infra.sqlalchemy_url(admin_dsn, customers_db).replace(
                "postgresql+asyncpg://", "postgresql://"
            )
            fill_seconds = await _fill(dsn, signed.tenant.id, signed.user.id, n)
            # Signed in after the load: an access token lives 5 minutes.
            token = (await ids.CreateToken(ipb.CreateTokenRequest(email=email, password=PASSWORD))).token
            md = (("authorization", f"Bearer {token.access_token}"),)

            assert customers.runtime is not None
            captured = Captured(customers.runtime.db.engine)
            conn = await asyncpg.connect(dsn)
            try:
                results: dict[str, Any] = {
                    "accounts": n,
                    "fill_seconds": round(fill_seconds, 1),
                    "runs": runs,
                }

                # (a) a filtered, sorted first page.
                first = pb.ListAccountsRequest(filter=["province:eq:广东省"], sort="-registered_capital")
                first.page.limit = 50

                async def service_first() -> Any:
                    return await stub.ListAccounts(first, metadata=md)

                results["filtered_sorted_page"] = await _compare(service_first, captured, conn, runs)
                results["filtered_sorted_page"]["floor"] = await _floor(service_first, captured, conn, runs)

                # (b) a page 900,000 rows deep (or 90% deep for smaller N).
                depth = min(900_000, int(n * 0.9))
                row = await conn.fetchrow(
                    "SELECT name, id FROM accounts WHERE tenant_id = $1 AND deleted_at IS NULL "
                    "ORDER BY name, id OFFSET $2 LIMIT 1",
                    signed.tenant.id,
                    depth - 1,
                )
                deep = pb.ListAccountsRequest(sort="name")
                deep.page.limit = 50
                deep.page.cursor = paging.encode_cursor(
                    [row["name"], row["id"]], paging.list_tag("accounts:name:id")
                )

                async def service_deep() -> Any:
                    return await stub.ListAccounts(deep, metadata=md)

                results["deep_page"] = {
                    "rows_deep": depth,
                    **await _compare(service_deep, captured, conn, runs),
                }

                # (c) keyword search.
                rng = random.Random(11)
                queries = []
                for _ in range(runs):
                    kind = rng.random()
                    if kind < 0.4:
                        queries.append(rng.choice(CHARS) + rng.choice(CHARS))
                    elif kind < 0.7:
                        queries.append(rng.choice(CHARS) + rng.choice(CHARS) + rng.choice(INDUSTRY))
                    elif kind < 0.85:
                        word = rng.choice(LATIN)
                        i = rng.randrange(1, len(word) - 1)
                        queries.append(word[:i] + word[i + 1 :])  # one letter missing
                    else:
                        queries.append(f"138{rng.randrange(10_000_000):08d}"[:9])
                latencies = []
                hits = 0
                for query in queries:
                    t = time.perf_counter()
                    answer = await stub.Search(
                        pb.SearchRequest(q=query, page=paging_pb2.PageRequest(limit=20)), metadata=md
                    )
                    latencies.append((time.perf_counter() - t) * 1000)
                    hits += bool(answer.items)
                results["search"] = {
                    "queries": len(queries),
                    "with_hits": hits,
                    "p50_ms": round(_p(latencies, 50), 2),
                    "p95_ms": round(_p(latencies, 95), 2),
                    "p99_ms": round(_p(latencies, 99), 2),
                    "target_p95_ms": 100,
                }
                return results
            finally:
                await conn.close()
    finally:
        await customers.stop(grace_seconds=1)
        await identity.stop(grace_seconds=1)
        await infra.drop_database(admin_dsn, customers_db)
        await infra.drop_database(admin_dsn, identity_db)
        if own_namespace:
            await infra.delete_streams(nats_url, f"bench{tag}")


async def _floor(
    service_call: Any, captured: Captured, conn: asyncpg.Connection, runs: int
) -> dict[str, Any]:
    """The transport's share: the same page's bytes answered by a bare gRPC server that does nothing else
    (no token, policy, SQL or conversion), fetched and decoded by the same client. Any gRPC service costs at
    least this on top of its SQL, so (floor + SQL) / SQL is the best ratio a service could reach here."""
    answer = (await service_call()).SerializeToString()
    sql, params = await captured.capture(service_call)

    async def list_accounts(request: bytes, context: Any) -> bytes:
        return answer

    server = grpc.aio.server()
    handlers = {"ListAccounts": grpc.unary_unary_rpc_method_handler(list_accounts)}
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("crm.customers.v1.CustomersService", handlers)]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = customers_pb2_grpc.CustomersServiceStub(channel)
            request = pb.ListAccountsRequest()

            async def bare() -> Any:
                return await stub.ListAccounts(request)

            stmt = await conn.prepare(sql)

            async def direct() -> Any:
                return await stmt.fetch(*params)

            for _ in range(20):
                await bare()
            floor_ms: list[float] = []
            direct_ms: list[float] = []
            for _ in range(max(1, runs // 20)):
                floor_ms += await _timed(bare, 20)
                direct_ms += await _timed(direct, 20)
    finally:
        await server.stop(None)
    f, d = statistics.median(floor_ms), statistics.median(direct_ms)
    return {
        "bare_grpc_p50_ms": round(f, 3),
        "direct_sql_p50_ms": round(d, 3),
        "best_possible_ratio": round((f + d) / d, 2),
    }


async def _compare(
    service_call: Any, captured: Captured, conn: asyncpg.Connection, runs: int
) -> dict[str, Any]:
    """Median latency through the service against the same SQL run directly; warmed up alike."""
    sql, params = await captured.capture(service_call)
    stmt = await conn.prepare(sql)

    async def direct() -> Any:
        return await stmt.fetch(*params)

    for _ in range(20):
        await service_call()
        await direct()
    service_ms: list[float] = []
    direct_ms: list[float] = []
    for _ in range(max(1, runs // 20)):  # interleaved, so both see the same machine
        service_ms += await _timed(service_call, 20)
        direct_ms += await _timed(direct, 20)
    s, d = statistics.median(service_ms), statistics.median(direct_ms)
    return {
        "service_p50_ms": round(s, 3),
        "direct_sql_p50_ms": round(d, 3),
        "ratio": round(s / d, 2),
        "target_ratio": 2.5,
    }


if __name__ == "__main__":
    admin = os.environ.get("CRM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    nats = os.environ.get("CRM_TEST_NATS_URL", "nats://127.0.0.1:4222")
    print(asyncio.run(run(admin, nats)))
