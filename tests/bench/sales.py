"""Sales figures of `make bench`, each against a baseline measured in the same run:

(a) the kanban board of a pipeline holding BENCH_SALES_OPPORTUNITIES (50,000) open opportunities: latency of
    `PipelinesService.GetBoard` (totals per stage and currency, 20 cards per column) over gRPC, against the same
    SQL statements run directly with asyncpg; the two are interleaved call by call. Target: p95 ratio <= 1.5.
(b) the claim race: 200 concurrent claims of 50 pool leads by 20 reps with a cap of 3: every cap held, every
    lead at most one winner, its owner that winner; how long the burst took.

    uv run python -m tests.bench sales          # or: make bench

Identity and sales run in this process (as the tests start them), against their own fresh databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from crm.identity.v1 import identity_pb2 as ipb
from crm.identity.v1 import identity_pb2_grpc
from crm.sales.v1 import leads_pb2 as lpb
from crm.sales.v1 import leads_pb2_grpc, pipelines_pb2_grpc
from crm.sales.v1 import pipelines_pb2 as ppb
from crm_kit import infra
from crm_kit.errors import from_rpc_error
from crm_kit.testing import running_service

OPPORTUNITIES = int(os.environ.get("BENCH_SALES_OPPORTUNITIES", "50000"))
BOARD_CALLS = int(os.environ.get("BENCH_SALES_BOARD_CALLS", "200"))
CARDS = 20
TARGET_P95_RATIO = 1.5
PASSWORD = "bench password 123"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


SEED = """
INSERT INTO opportunities (
    id, tenant_id, name, account_id, contact_id, lead_id, pipeline_id, stage_id, amount, currency, close_date,
    probability, forecast_category, next_step, competitors, products, team_member_ids, follower_ids, owner_id,
    department_id, status, won_reason, lost_reason, closed_at, stage_entered_at, description, version)
SELECT gen_random_uuid()::text, $1, '商机 ' || i, '', '', '', $2, ($3::text[])[1 + i % 4],
       round((random() * 1000000)::numeric, 2), CASE WHEN i % 10 = 0 THEN 'USD' ELSE 'CNY' END,
       current_date + (i % 90), ($4::int[])[1 + i % 4], 'pipeline', '', '{}', '[]', '{}', '{}', $5,
       NULL, 'open', '', '', NULL, now() - make_interval(mins => i), '', 1
FROM generate_series(1, $6) AS i
"""

# What GetBoard runs for an admin (data scope "all"), statement for statement.
PIPELINE_SQL = "SELECT * FROM pipelines WHERE id = $1 AND tenant_id = $2"
STAGES_SQL = "SELECT * FROM pipeline_stages WHERE pipeline_id = $1 AND NOT archived ORDER BY position"
TOTALS_SQL = """
SELECT stage_id, currency, count(*), coalesce(sum(amount), 0)
FROM opportunities WHERE tenant_id = $1 AND pipeline_id = $2 AND status = 'open' AND true
GROUP BY stage_id, currency
"""


def cards_sql(stage_count: int) -> str:
    one = (
        "(SELECT id, name, account_id, amount, currency, close_date, owner_id, stage_id, stage_entered_at, version "
        "FROM opportunities WHERE tenant_id = $1 AND pipeline_id = $2 AND status = 'open' AND true "
        "AND stage_id = ${n} ORDER BY stage_entered_at DESC, id DESC LIMIT $3)"
    )
    return " UNION ALL ".join(one.replace("${n}", f"${4 + i}") for i in range(stage_count))


async def _company(identity: Any) -> tuple[ipb.SignUpResponse, str]:
    email = f"bench.{uuid.uuid4().hex[:10]}@example.com"
    up = await identity.SignUp(
        ipb.SignUpRequest(tenant_name="基准测试有限公司", email=email, password=PASSWORD, name="管理员")
    )
    token = (await identity.CreateToken(ipb.CreateTokenRequest(email=email, password=PASSWORD))).token
    return up, token.access_token


async def board_figures(identity: Any, pipelines: Any, sales_dsn: str) -> dict[str, Any]:
    up, token = await _company(identity)
    pipeline = (
        await pipelines.CreatePipeline(ppb.CreatePipelineRequest(name="基准"), metadata=auth(token))
    ).pipeline
    open_stages = [s for s in pipeline.stages if s.kind == ppb.STAGE_KIND_OPEN]
    conn = await asyncpg.connect(sales_dsn)
    try:
        started = time.monotonic()
        await conn.execute(
            SEED,
            up.tenant.id,
            pipeline.id,
            [s.id for s in open_stages],
            [s.probability for s in open_stages],
            up.user.id,
            OPPORTUNITIES,
        )
        await conn.execute("VACUUM ANALYZE opportunities")
        seeded = time.monotonic() - started
        cards = cards_sql(len(open_stages))
        stage_ids = [s.id for s in open_stages]

        async def direct() -> None:
            await conn.fetchrow(PIPELINE_SQL, pipeline.id, up.tenant.id)
            await conn.fetch(STAGES_SQL, pipeline.id)
            await conn.fetch(TOTALS_SQL, up.tenant.id, pipeline.id)
            await conn.fetch(cards, up.tenant.id, pipeline.id, CARDS, *stage_ids)

        request = ppb.GetBoardRequest(id=pipeline.id, cards_per_stage=CARDS)

        async def service() -> ppb.GetBoardResponse:
            return await pipelines.GetBoard(request, metadata=auth(token))

        for _ in range(10):  # warm both paths: prepared statements, caches, the policy
            await direct()
            answer = await service()
        assert sum(c.count for c in answer.columns) == OPPORTUNITIES
        assert all(len(c.cards) == CARDS for c in answer.columns if c.stage.kind == ppb.STAGE_KIND_OPEN)
        via_service: list[float] = []
        via_sql: list[float] = []
        for _ in range(BOARD_CALLS):
            t0 = time.perf_counter()
            await direct()
            t1 = time.perf_counter()
            await service()
            t2 = time.perf_counter()
            via_sql.append(t1 - t0)
            via_service.append(t2 - t1)
    finally:
        await conn.close()
    s, d = summary(via_service), summary(via_sql)
    ratio = round(s["p95_ms"] / d["p95_ms"], 3)
    return {
        "open_opportunities": OPPORTUNITIES,
        "seconds_to_seed": round(seeded, 1),
        "cards_per_stage": CARDS,
        "get_board_grpc": s,
        "same_sql_direct": d,
        "p95_ratio": ratio,
        "p50_ratio": round(s["p50_ms"] / d["p50_ms"], 3),
        "target_p95_ratio": TARGET_P95_RATIO,
        "meets_target": ratio <= TARGET_P95_RATIO,
    }


async def _rep(identity: Any, admin_token: str, role_id: str) -> tuple[str, str]:
    email = f"rep.{uuid.uuid4().hex[:10]}@example.com"
    invited = await identity.CreateUser(
        ipb.CreateUserRequest(email=email, name="销售", role_ids=[role_id]), metadata=auth(admin_token)
    )
    await identity.AcceptInvitation(
        ipb.AcceptInvitationRequest(invitation_token=invited.user.invitation_token, password=PASSWORD)
    )
    token = (await identity.CreateToken(ipb.CreateTokenRequest(email=email, password=PASSWORD))).token
    return invited.user.id, token.access_token


async def claim_race(identity: Any, leads: Any) -> dict[str, Any]:
    _, admin = await _company(identity)
    role = (
        await identity.CreateRole(
            ipb.CreateRoleRequest(
                name="一线销售",
                permissions=[
                    ipb.Permission(object="lead", actions=["read", "update"], data_scope=ipb.DATA_SCOPE_OWN)
                ],
            ),
            metadata=auth(admin),
        )
    ).role
    reps: list[tuple[str, str]] = []
    for start in range(0, 20, 5):
        reps.extend(await asyncio.gather(*(_rep(identity, admin, role.id) for _ in range(start, start + 5))))
    pool = (
        await leads.CreateLeadPool(
            lpb.CreateLeadPoolRequest(name="抢单池", member_ids=[r[0] for r in reps], claim_cap=3),
            metadata=auth(admin),
        )
    ).pool
    waiting = [
        (
            await leads.CreateLead(
                lpb.CreateLeadRequest(name=f"线索{i}", pool_id=pool.id), metadata=auth(admin)
            )
        ).lead.id
        for i in range(50)
    ]

    async def attempt(i: int) -> tuple[str, str, str]:
        lead_no, k = divmod(i, 4)  # every lead wanted by 4 different reps; ~10 claims per rep
        rep_id, token = reps[(lead_no + 5 * k) % 20]
        try:
            await leads.ClaimLead(lpb.ClaimLeadRequest(id=waiting[lead_no]), metadata=auth(token))
            return rep_id, waiting[lead_no], "won"
        except grpc.aio.AioRpcError as exc:
            return rep_id, waiting[lead_no], from_rpc_error(exc).reason or exc.code().name

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(attempt(i) for i in range(200)))
    elapsed = time.perf_counter() - started
    owners = {
        lead_id: (await leads.GetLead(lpb.GetLeadRequest(id=lead_id), metadata=auth(admin))).lead.owner_id
        for lead_id in waiting
    }
    wins = [(rep, lead) for rep, lead, outcome in outcomes if outcome == "won"]
    held = Counter(owner for owner in owners.values() if owner)
    winners = Counter(lead for _, lead in wins)
    return {
        "claims": len(outcomes),
        "reps": 20,
        "leads": 50,
        "cap": 3,
        "outcomes": dict(Counter(o for _, _, o in outcomes)),
        "max_held_by_one_rep": max(held.values(), default=0),
        "every_cap_held": max(held.values(), default=0) <= 3,
        "leads_with_an_owner": sum(1 for o in owners.values() if o),
        "every_lead_at_most_one_winner": max(winners.values(), default=0) <= 1,
        "owners_are_the_winners": {lead: rep for rep, lead in wins} == {k: v for k, v in owners.items() if v},
        "burst_ms": round(elapsed * 1000, 1),
        "claims_per_second": round(len(outcomes) / elapsed, 1),
    }


async def run(admin_dsn: str, nats_url: str) -> dict[str, Any]:
    from crm_identity.app import SPEC as IDENTITY
    from crm_identity.settings import IdentitySettings
    from crm_sales.app import SPEC as SALES
    from crm_sales.settings import SalesSettings

    run_id = uuid.uuid4().hex[:8]
    names = {"identity": f"bench_{run_id}_identity", "sales": f"bench_{run_id}_sales"}
    for name in names.values():
        await infra.create_database(admin_dsn, name)
    previous = os.environ.get("CRM_EVENTS_NAMESPACE")
    os.environ["CRM_EVENTS_NAMESPACE"] = f"b{run_id}"
    work = Path(tempfile.mkdtemp(prefix="bench-sales-"))
    common = {"environment": "test", "nats_url": nats_url, "grpc_host": "127.0.0.1", "grpc_port": 0}
    try:
        identity_settings = IdentitySettings(
            database_url=infra.sqlalchemy_url(admin_dsn, names["identity"]),
            migrate_on_start=True,
            data_dir=work,
            **common,
        )
        async with running_service(IDENTITY, identity_settings) as identity_service:
            sales_settings = SalesSettings(
                database_url=infra.sqlalchemy_url(admin_dsn, names["sales"]),
                migrate_on_start=True,
                identity_service_addr=identity_service.address,
                reclaim_interval_seconds=0,
                database_pool_size=20,
                **common,
            )
            async with (
                running_service(SALES, sales_settings) as sales_service,
                grpc.aio.insecure_channel(identity_service.address) as identity_channel,
                grpc.aio.insecure_channel(sales_service.address) as sales_channel,
            ):
                identity = identity_pb2_grpc.IdentityServiceStub(identity_channel)
                sales_dsn = infra.sqlalchemy_url(admin_dsn, names["sales"]).replace(
                    "postgresql+asyncpg", "postgresql"
                )
                board = await board_figures(
                    identity, pipelines_pb2_grpc.PipelinesServiceStub(sales_channel), sales_dsn
                )
                race = await claim_race(identity, leads_pb2_grpc.LeadsServiceStub(sales_channel))
        return {"board": board, "claim_race": race}
    finally:
        await infra.delete_streams(nats_url, f"b{run_id}")
        if previous is None:
            os.environ.pop("CRM_EVENTS_NAMESPACE", None)
        else:
            os.environ["CRM_EVENTS_NAMESPACE"] = previous
        for name in names.values():
            with contextlib.suppress(Exception):
                await infra.drop_database(admin_dsn, name)


if __name__ == "__main__":
    import json

    dsn = os.environ.get("CRM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    nats = os.environ.get("CRM_TEST_NATS_URL", "nats://127.0.0.1:4222")
    print(json.dumps(asyncio.run(run(dsn, nats)), indent=2, ensure_ascii=False))
