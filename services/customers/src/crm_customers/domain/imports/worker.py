"""The background worker of every customers replica: the kit's import worker (`crm_kit.imports.worker`), plus
duplicate scans (claimed and leased the same way) and the hourly purge of expired merge undo data."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from crm_kit import context
from crm_kit.context import Principal
from crm_kit.db import Database, utcnow
from crm_kit.imports import worker
from crm_kit.imports.importer import Importer
from sqlalchemy import update

from crm_customers.domain.dedup import merge as merges
from crm_customers.domain.dedup import scan as scans
from crm_customers.domain.dedup.models import DuplicateScan
from crm_customers.domain.imports.importers import IMPORTERS

log = logging.getLogger("crm.customers.worker")

MAX_ATTEMPTS = worker.MAX_ATTEMPTS


class Worker(worker.Worker):
    def __init__(
        self,
        db: Database,
        *,
        importers: Mapping[str, Importer] = IMPORTERS,
        poll_seconds: float = 2.0,
        lease_seconds: float = 60.0,
    ):
        super().__init__(
            db,
            importers,
            poll_seconds=poll_seconds,
            lease_seconds=lease_seconds,
            name="customers-data-worker",
        )
        self._last_purge = 0.0

    async def run_once(self) -> bool:
        """Run one claimable scan or import, if any. True when there was one."""
        await self._purge_expired_undo()
        scan = await self.claim(DuplicateScan)
        if scan is not None:
            await self._run_scan(scan)
            return True
        return await super().run_once()

    async def _run_scan(self, scan: DuplicateScan) -> None:
        renew = asyncio.create_task(self.renew(DuplicateScan, scan.id, None))
        token = context.bind(
            context.RequestContext(principal=Principal(tenant_id=scan.tenant_id, actor_id=scan.created_by))
        )
        try:
            async with self.db.unit_of_work() as uow:
                row = await uow.session.get(DuplicateScan, scan.id, with_for_update=True)
                await scans.run(uow.session, row)
                row.lease_until = None
        except Exception as exc:
            log.exception("duplicate scan %s failed", scan.id)
            async with self.db.unit_of_work() as uow:
                await uow.session.execute(
                    update(DuplicateScan)
                    .where(DuplicateScan.id == scan.id)
                    .values(
                        status="failed", error=f"the scan failed ({type(exc).__name__})", finished_at=utcnow()
                    )
                )
        finally:
            context.reset(token)
            renew.cancel()
            with contextlib.suppress(BaseException):
                await renew

    async def _purge_expired_undo(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_purge < 3600:
            return
        self._last_purge = loop.time()
        async with self.db.unit_of_work() as uow:
            await merges.expire_undo_data(uow.session)
