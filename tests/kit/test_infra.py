import asyncpg
import nats


async def test_each_run_gets_its_own_postgres_database_and_a_jetstream_nats(test_infra):
    url = await test_infra.database("infra_probe")
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(url))
    try:
        assert await conn.fetchval("SELECT current_database()") == f"crm_t{test_infra.run_id}_infra_probe"
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'") == 1
    finally:
        await conn.close()
    nc = await nats.connect(test_infra.nats_url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()
