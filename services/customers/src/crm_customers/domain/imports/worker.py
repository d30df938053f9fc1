"""The background worker of every customers replica: runs queued imports and duplicate scans.

Jobs live in PostgreSQL, so any replica can run any job. A worker claims one with `FOR UPDATE SKIP LOCKED`
and a lease that it renews while it works; the claim bumps `attempts`, which fences the batches of a worker
that lost its lease. A job whose lease ran out (its replica died) is claimed again and resumes from its
checkpoint; after MAX_ATTEMPTS claims it is failed with a reason instead of looping forever. Starting a job
on this replica wakes this worker at once; other replicas poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

from crm_kit import context
from crm_kit.context import Principal
from crm_kit.db import Database, utcnow
from sqlalchemy import or_, select, update

from crm_customers.domain.dedup import merge as merges
from crm_customers.domain.dedup import scan as scans
from crm_customers.domain.dedup.models import DuplicateScan
from crm_customers.domain.imports import pipeline, source
from crm_customers.domain.imports.models import ImportJob

log = logging.getLogger("crm.customers.worker")

MAX_ATTEMPTS = 3


class Worker:
    def __init__(self, db: Database, *, poll_seconds: float = 2.0, lease_seconds: float = 60.0):
        self.db = db
        self.poll = poll_seconds
        self.lease = dt.timedelta(seconds=lease_seconds)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_purge = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="customers-data-worker")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broken job must not stop the worker
                log.exception("data worker step failed")
                worked = False
            if worked:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll)

    async def run_once(self) -> bool:
        """Run one claimable job, if any. True when there was one."""
        await self._purge_expired_undo()
        scan = await self._claim(DuplicateScan)
        if scan is not None:
            await self._run_scan(scan)
            return True
        job = await self._claim(ImportJob)
        if job is not None:
            await self._run_import(job)
            return True
        return False

    async def _claim(self, model: Any) -> Any:
        now = utcnow()
        async with self.db.unit_of_work() as uow:
            session = uow.session
            candidate = (
                select(model.id)
                .where(
                    or_(
                        model.status == "queued",
                        (model.status == "running") & (model.lease_until < now),
                    )
                )
                .order_by(model.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            row = (
                await session.scalars(select(model).where(model.id.in_(candidate.scalar_subquery())))
            ).first()
            if row is None:
                return None
            row.status = "running"
            row.lease_until = now + self.lease
            if model is ImportJob:
                row.attempts += 1
                row.started_at = row.started_at or now
                if row.attempts > MAX_ATTEMPTS:
                    row.status, row.finished_at, row.lease_until = "failed", now, None
                    row.error = (
                        f"the import stopped {MAX_ATTEMPTS} times without finishing; rows up to "
                        f"{row.rows_done} are imported"
                    )
                    return None
            await session.flush()
            return row

    async def _renew(self, model: Any, row_id: str, claim: int | None) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            async with self.db.unit_of_work() as uow:
                stmt = update(model).where(model.id == row_id, model.status == "running")
                if claim is not None:
                    stmt = stmt.where(model.attempts == claim)
                result = await uow.session.execute(stmt.values(lease_until=utcnow() + self.lease))
            if not result.rowcount:
                return

    async def _run_import(self, job: ImportJob) -> None:
        claim = job.attempts
        renew = asyncio.create_task(self._renew(ImportJob, job.id, claim))
        error = ""
        try:
            await pipeline.run(self.db, job, claim=claim)
        except pipeline.LeaseLost:
            log.warning("import %s: another worker took it over", job.id)
            return
        except source.BadFile as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("import %s failed", job.id)
            error = (
                f"the import stopped on an unexpected error ({type(exc).__name__}); rows up to the last "
                "checkpoint are imported"
            )
        finally:
            renew.cancel()
            with contextlib.suppress(BaseException):
                await renew
        if error:
            async with self.db.unit_of_work() as uow:
                await uow.session.execute(
                    update(ImportJob)
                    .where(ImportJob.id == job.id, ImportJob.attempts == claim)
                    .values(status="failed", error=error, finished_at=utcnow(), lease_until=None)
                )

    async def _run_scan(self, scan: DuplicateScan) -> None:
        renew = asyncio.create_task(self._renew(DuplicateScan, scan.id, None))
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
