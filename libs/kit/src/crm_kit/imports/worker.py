"""The background worker of every replica of a service that imports: runs queued imports.

Jobs live in PostgreSQL, so any replica can run any job. A worker claims one with `FOR UPDATE SKIP LOCKED`
and a lease that it renews while it works; the claim bumps `attempts`, which fences the batches of a worker
that lost its lease. A job whose lease ran out (its replica died) is claimed again and resumes from its
checkpoint; after MAX_ATTEMPTS claims it is failed with a reason instead of looping forever. Starting a job
on this replica wakes this worker at once; other replicas poll.

A service with other background jobs of the same shape (customers' duplicate scans) subclasses the worker,
does its own steps in `run_once` and uses `claim` / `renew` for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, or_, select, update

from crm_kit.db import Database, utcnow
from crm_kit.imports import jobs, pipeline, source
from crm_kit.imports.importer import Importer
from crm_kit.imports.models import ImportFileChunk, ImportJob
from crm_kit.leader import PeriodicJob

log = logging.getLogger("crm.imports.worker")

MAX_ATTEMPTS = 3
# An uploaded file never started is deleted (its job cancelled) after this long; the purge runs hourly, in one
# replica at a time.
UPLOAD_RETENTION = dt.timedelta(hours=24)
PURGE_INTERVAL_SECONDS = 3600.0


class Worker:
    def __init__(
        self,
        db: Database,
        importers: Mapping[str, Importer],
        *,
        poll_seconds: float = 2.0,
        lease_seconds: float = 60.0,
        name: str = "imports-worker",
    ):
        self.db = db
        self.importers = importers
        self.poll = poll_seconds
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.name = name
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._purge = PeriodicJob(
            db.url, f"{name}-purge-files", self.purge_files, interval=PURGE_INTERVAL_SECONDS
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._purge.stop()

    async def purge_files(self) -> int:
        """Cancel the uploads never started within UPLOAD_RETENTION (each audited as its importer's finished
        event) and delete the file of every finished job; returns how many jobs were cancelled."""
        cutoff = utcnow() - UPLOAD_RETENTION
        async with self.db.unit_of_work() as uow:
            stale = (
                await uow.session.scalars(
                    select(ImportJob)
                    .where(ImportJob.status == "uploaded", ImportJob.created_at < cutoff)
                    .order_by(ImportJob.id)
                    .limit(1000)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for job in stale:
                job.status, job.finished_at = "cancelled", utcnow()
                job.error = f"the file was not imported within {UPLOAD_RETENTION.total_seconds() / 3600:g} h"
                jobs.emit_finished(uow, self.importers.get(job.target), job)
            await uow.session.flush()
            finished = select(ImportJob.id).where(ImportJob.status.in_(jobs.FINISHED))
            await uow.session.execute(delete(ImportFileChunk).where(ImportFileChunk.job_id.in_(finished)))
        return len(stale)

    async def _loop(self) -> None:
        with contextlib.suppress(Exception):  # without the purge the worker still works; logged by the leader
            await self._purge.start()
        while True:
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broken job must not stop the worker
                log.exception("%s step failed", self.name)
                worked = False
            if worked:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll)

    async def run_once(self) -> bool:
        """Run one claimable import, if any. True when there was one."""
        job = await self.claim(ImportJob, counted=True)
        if job is None:
            return False
        await self.run_import(job)
        return True

    async def claim(self, model: Any, *, counted: bool = False) -> Any:
        """The first queued row of `model` (or running with its lease run out), now running under this worker's
        lease. `counted`: the claim bumps `attempts` (the fence), and a row claimed too often fails instead."""
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
            if counted:
                row.attempts += 1
                row.started_at = row.started_at or now
                if row.attempts > MAX_ATTEMPTS:
                    row.status, row.finished_at, row.lease_until = "failed", now, None
                    row.error = (
                        f"the import stopped {MAX_ATTEMPTS} times without finishing; rows up to "
                        f"{row.rows_done} are imported"
                    )
                    if isinstance(row, ImportJob):
                        await jobs.drop_file(session, row.id)
                    return None
            await session.flush()
            return row

    async def renew(self, model: Any, row_id: str, claim: int | None) -> None:
        """Keep the lease while the work runs (cancel this task when it ends); stops once the row is no longer
        running under this claim."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                async with self.db.unit_of_work() as uow:
                    stmt = update(model).where(model.id == row_id, model.status == "running")
                    if claim is not None:
                        stmt = stmt.where(model.attempts == claim)
                    result = await uow.session.execute(stmt.values(lease_until=utcnow() + self.lease))
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed renewal is tried again; the lease leaves two more chances
                log.warning("%s: renewing the lease of %s failed", self.name, row_id, exc_info=True)
                continue
            if not result.rowcount:
                return

    async def run_import(self, job: ImportJob) -> None:
        claim = job.attempts
        renew = asyncio.create_task(self.renew(ImportJob, job.id, claim))
        error = ""
        try:
            importer = self.importers.get(job.target)
            if importer is None:
                raise RuntimeError(f"no importer for {job.target!r}")
            await pipeline.run(self.db, importer, job, claim=claim)
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
                failed = await uow.session.execute(
                    update(ImportJob)
                    .where(ImportJob.id == job.id, ImportJob.attempts == claim)
                    .values(status="failed", error=error, finished_at=utcnow(), lease_until=None)
                )
                if failed.rowcount:
                    await jobs.drop_file(uow.session, job.id)
