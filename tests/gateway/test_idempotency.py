"""Idempotency-Key against the gateway's real PostgreSQL database, as several gateway replicas share it."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from crm_gateway.idempotency import IdempotencyStore, Reply
from crm_gateway.problems import ProblemError
from crm_gateway.store import GatewayDatabase
from crm_kit import infra
from crm_kit.leader import asyncpg_dsn

from tests.gateway.conftest import gateway_database


@pytest.fixture
async def gateway_db(test_infra):
    """The URL of a migrated gateway database."""
    url = gateway_database(test_infra)
    await infra.create_database(test_infra.postgres_admin_dsn, url.rsplit("/", 1)[1], extensions=())
    db = GatewayDatabase(url, migrate=True)
    await db.start()
    await db.stop()
    return url


@pytest.fixture
async def databases(gateway_db):
    """Two replicas' connections to one gateway database."""
    made = [GatewayDatabase(gateway_db) for _ in range(2)]
    for db in made:
        await db.start()
    yield made
    for db in made:
        await db.stop()


@pytest.fixture
def stores(databases):
    """Two replicas' stores on one database."""
    return [IdempotencyStore(db, secret="s" * 32, lock_seconds=5) for db in databases]


class Counter:
    def __init__(self, reply: Reply | None = None, delay: float = 0.0, fail: Exception | None = None):
        self.calls = 0
        self.reply = reply or Reply(
            201, b'{"id":"d1"}', {"Location": "/api/v1/departments/d1", "ETag": '"1"'}
        )
        self.delay = delay
        self.fail = fail

    async def __call__(self) -> Reply:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        return Reply(self.reply.status, self.reply.body, dict(self.reply.headers))


def request(store, execute, *, key, body=b'{"name":"x"}', scope="tenant1:user1"):
    return store.run(
        scope=scope, key=key, method="POST", target="/api/v1/departments", body=body, execute=execute
    )


async def test_a_retry_replays_the_first_reply_on_any_replica(stores):
    key, work = str(uuid.uuid4()), Counter()
    first = await request(stores[0], work, key=key)
    second = await request(stores[1], work, key=key)
    assert work.calls == 1
    assert (second.status, second.body) == (first.status, first.body)
    assert second.headers["Location"] == "/api/v1/departments/d1" and second.headers["ETag"] == '"1"'
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers


async def test_the_same_key_with_another_body_is_refused(stores):
    key, work = str(uuid.uuid4()), Counter()
    await request(stores[0], work, key=key)
    with pytest.raises(ProblemError) as info:
        await request(stores[1], work, key=key, body=b'{"name":"y"}')
    assert (info.value.status, info.value.code) == (422, "idempotency_key_reused")
    assert work.calls == 1


async def test_keys_are_scoped_to_the_credential(stores):
    key, work = str(uuid.uuid4()), Counter()
    await request(stores[0], work, key=key, scope="tenant1:user1")
    await request(stores[0], work, key=key, scope="tenant2:user9")
    assert work.calls == 2


async def test_concurrent_duplicates_run_once(stores):
    key, work = str(uuid.uuid4()), Counter(delay=0.3)
    results = await asyncio.gather(
        *(request(stores[i % 2], work, key=key) for i in range(8)), return_exceptions=True
    )
    assert work.calls == 1
    winners = [r for r in results if isinstance(r, Reply)]
    losers = [r for r in results if isinstance(r, ProblemError)]
    assert len(winners) == 1 and len(losers) == 7
    assert all(
        p.status == 409 and p.code == "idempotency_in_progress" and p.headers["Retry-After"] for p in losers
    )
    # Once finished, a retry gets the reply.
    replay = await request(stores[1], work, key=key)
    assert replay.body == winners[0].body and work.calls == 1


async def test_a_server_error_or_crash_lets_the_client_retry(stores):
    key = str(uuid.uuid4())
    failing = Counter(reply=Reply(503, b'{"code":"unavailable"}', {}))
    assert (await request(stores[0], failing, key=key)).status == 503
    ok = Counter()
    assert (await request(stores[0], ok, key=key)).status == 201
    assert ok.calls == 1

    key = str(uuid.uuid4())
    with pytest.raises(RuntimeError):
        await request(stores[0], Counter(fail=RuntimeError("boom")), key=key)
    assert (await request(stores[1], ok, key=key)).status == 201


async def test_a_client_error_is_remembered(stores):
    key = str(uuid.uuid4())
    conflict = Counter(
        reply=Reply(409, b'{"code":"already_exists"}', {"content-type": "application/problem+json"})
    )
    await request(stores[0], conflict, key=key)
    again = await request(stores[1], conflict, key=key)
    assert again.status == 409 and again.headers["content-type"] == "application/problem+json"
    assert conflict.calls == 1


async def test_a_claim_left_by_a_dead_replica_is_taken_over(databases, gateway_db):
    store = IdempotencyStore(databases[0], secret="s" * 32, lock_seconds=0.5)
    key = str(uuid.uuid4())
    name = store.entry_name("tenant1:user1", key)
    fp = store.fingerprint("tenant1:user1", "POST", "/api/v1/departments", b'{"name":"x"}')
    await databases[0].pool.execute(  # claimed by a replica that died long ago
        "INSERT INTO idempotency_keys (name, fingerprint, claim, done, claimed_at, expires_at) "
        "VALUES ($1, $2, 'dead', false, now() - interval '1 hour', now() + interval '1 hour')",
        name,
        fp,
    )
    work = Counter()
    assert (await request(store, work, key=key)).status == 201
    assert work.calls == 1


async def test_an_entry_lives_the_configured_time(databases):
    store = IdempotencyStore(databases[0], secret="s" * 32, ttl_seconds=1)
    key, work = str(uuid.uuid4()), Counter()
    await request(store, work, key=key)
    assert (await request(store, work, key=key)).headers["Idempotent-Replayed"] == "true"
    await asyncio.sleep(1.2)
    again = await request(store, work, key=key, body=b'{"name":"y"}')  # forgotten: a new request
    assert work.calls == 2 and "Idempotent-Replayed" not in again.headers
    await databases[0].purge()
    assert (
        await databases[0].pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE expires_at < now()")
        == 0
    )


async def test_stored_replies_cannot_be_read_from_the_database(stores, gateway_db):
    key = str(uuid.uuid4())
    secret_reply = Reply(201, b'{"secret":"crm_live_0123456789abcdef"}', {})
    await request(stores[0], Counter(reply=secret_reply), key=key)
    conn = await asyncpg.connect(asyncpg_dsn(gateway_db))
    try:
        rows = await conn.fetch("SELECT * FROM idempotency_keys")
    finally:
        await conn.close()
    stored = b"".join(bytes(r["reply"] or b"") + r["name"].encode() for r in rows)
    assert rows and b"crm_live" not in stored and key.encode() not in stored


async def test_without_its_database_a_keyed_request_is_refused_not_run(test_infra):
    db = GatewayDatabase(gateway_database(test_infra))  # never started: nothing to talk to
    store = IdempotencyStore(db, secret="s" * 32)
    work = Counter()
    with pytest.raises(ProblemError) as info:
        await request(store, work, key="k1")
    assert info.value.status == 503 and work.calls == 0


@pytest.mark.parametrize("key", ["", "naïve", "tab\there"])
async def test_malformed_keys_are_400(stores, key):
    with pytest.raises(ProblemError) as info:
        await request(stores[0], Counter(), key=key)
    assert info.value.status == 400


async def test_an_over_long_key_is_422(stores):
    with pytest.raises(ProblemError) as info:
        await request(stores[0], Counter(), key="x" * 256)
    assert info.value.status == 422
