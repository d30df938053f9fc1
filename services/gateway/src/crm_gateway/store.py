"""The gateway's own PostgreSQL database (`CRM_DATABASE_URL`), the state every replica must share:
Idempotency-Key entries (`idempotency.py`) and rate-limit counters (`ratelimit.py`). Nothing on a request's
path depends on NATS.

Like a service, the gateway waits for its database at start (bounded), runs its migrations when
`CRM_MIGRATE_ON_START` is set (in Kubernetes the migration Job runs `python -m crm_gateway migrate`), and
purges expired rows once a minute (on every replica: the statements are cheap and idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import asyncpg
from crm_kit.db import wait_for_database
from crm_kit.leader import asyncpg_dsn
from crm_kit.migrations import upgrade

log = logging.getLogger("crm.gateway.store")

MIGRATIONS = Path(__file__).parent / "migrations"
PURGE_EVERY_SECONDS = 60.0
PURGE = (
    "DELETE FROM idempotency_keys WHERE name IN "
    "(SELECT name FROM idempotency_keys WHERE expires_at < now() ORDER BY expires_at LIMIT 5000)",
    "DELETE FROM rate_limit_counters WHERE window_end < now() - interval '1 minute'",
)


class GatewayDatabase:
    def __init__(
        self, url: str, *, pool_size: int = 10, migrate: bool = False, statement_timeout: float = 5.0
    ):
        self.url = url
        self.pool_size = pool_size
        self.migrate = migrate
        # A statement that has not answered in this long fails (an idempotent write is then a 503), rather than
        # holding the request for as long as the database is stuck.
        self.statement_timeout = statement_timeout
        self._pool: asyncpg.Pool | None = None
        self._purger: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "GatewayDatabase.start() first"
        return self._pool

    async def start(self) -> None:
        if not self.url:
            raise ValueError("the gateway needs its database: set CRM_DATABASE_URL")
        await wait_for_database(self.url)
        if self.migrate:
            await upgrade(MIGRATIONS, self.url)
        self._pool = await asyncpg.create_pool(
            asyncpg_dsn(self.url),
            min_size=1,
            max_size=self.pool_size,
            command_timeout=self.statement_timeout,
            max_inactive_connection_lifetime=300,
        )
        self._purger = asyncio.create_task(self._purge_forever(), name="gateway store purge")

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        if self._pool is not None:
            await self._pool.close()
        self._pool = None

    async def purge(self) -> None:
        for statement in PURGE:
            await self.pool.execute(statement)

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY_SECONDS)
            try:
                await self.purge()
            except Exception as exc:  # next minute, then
                log.warning("could not purge expired idempotency keys and counters: %s", exc)


async def migrate(url: str) -> None:
    await wait_for_database(url)
    await upgrade(MIGRATIONS, url)
