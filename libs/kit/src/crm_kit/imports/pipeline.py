"""The import itself: file rows → the service's records, in batches, each batch one transaction.

    spool file from PostgreSQL to a temp file ──► parse + convert a batch (thread or child process) ──► queue
                                                                                                          │
        one transaction per batch: the service checks the rows (references, duplicates) and writes them, ◄─┘
        the checkpoint moves and the batch's error rows are COPied

- Flat memory: the file streams from disk; at most three batches are in memory.
- Parsing overlaps the database: the converter fills the next batch while a batch's statements run.
- A failed row never leaves half a record: a batch is one transaction; if it fails as a whole (a row the
  checks let through is refused by a constraint), it is rolled back and retried row by row, each in a
  savepoint, and the refused rows go to the error report with the database's reason.
- Checkpoint: `rows_done` moves in the same transaction as the batch's rows. A worker that dies loses at most
  the batch in flight; the job's lease runs out and another worker resumes after the last committed row. The
  worker's claim number (`attempts`) fences a worker that lost its lease: its next commit matches no row.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import pickle
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from crm_kit import context
from crm_kit.context import Principal
from crm_kit.db import Database, database_unreachable, driver_of, error_chain, utcnow
from crm_kit.errors import AlreadyExists, InvalidArgument
from crm_kit.imports import jobs, source
from crm_kit.imports.importer import Batcher, Importer, Outcome, Row, outcome_of
from crm_kit.imports.models import ImportJob
from crm_kit.policy import Decision

log = logging.getLogger("crm.imports")

DRY_RUN_ROWS = 10_000
DRY_RUN_ERRORS = 100
PREVIEW_ROWS = 5
# Files this large are converted in a child process (`converter_process`, when the batcher offers a
# `child_spec`); smaller ones in a thread, which starts at once (a child takes a second or two to import).
CHILD_PROCESS_BYTES = 8 << 20
# What a database refusal of a row looks like: raw asyncpg errors (COPY), SQLAlchemy's, or the unit of
# work's translation of an integrity error.
REFUSALS = (DBAPIError, asyncpg.PostgresError, InvalidArgument, AlreadyExists)


# A batch whose database could not be reached is tried again after 1, 2, 4, 8, 16 and 30 s (about a minute; the
# lease is renewed meanwhile, and a longer outage hands the job to another worker once the lease runs out).
BATCH_RETRY_DELAYS = (1, 2, 4, 8, 16, 30)


class LeaseLost(Exception):
    """Another worker took the job over (this one was too slow to renew its lease)."""


def unreachable(exc: BaseException) -> bool:
    """A failure to reach the database (worth waiting for), not a refusal of the rows. A batch talks to nothing
    but its database, so a socket error (refused, reset, timed out) is the database's too."""
    return database_unreachable(exc) or any(isinstance(e, OSError) for e in error_chain(exc))


def copy_text(text_: str) -> str:
    """A value in COPY's text format."""
    if "\\" in text_ or "\t" in text_ or "\n" in text_ or "\r" in text_:
        return text_.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text_


def _reason(exc: Exception) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig  # type: ignore[assignment]
    text_ = getattr(exc, "message", None) or str(exc)
    return (text_.splitlines() or [""])[0][:300]


def principal_of(job: ImportJob) -> Principal:
    """Who the worker acts as: the job's starter, with their roles."""
    return Principal(
        tenant_id=job.tenant_id,
        actor_id=job.created_by,
        role_ids=tuple(job.role_ids or ()),
        department_id=job.department_id if job.owner_id == job.created_by else "",
    )


def batches(rows: Iterator[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    batch: list[tuple[int, list[str]]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def fresh_rows(rows: Iterator[tuple[int, list[str]]], resume_after: int, seen: list[int]) -> Iterator[Any]:
    """The data rows after the checkpoint; `seen[0]` counts every data row read."""
    for item in rows:
        seen[0] += 1
        if seen[0] > resume_after:
            yield item


# ---------------------------------------------------------------- one batch


async def commit_batch(
    db: Database,
    batcher: Batcher,
    job: ImportJob,
    claim: int,
    batch: list[Row],
    done_before: int,
    done_after: int,
) -> Outcome:
    """The batch and its checkpoint, in one transaction; on a database refusal, row by row in savepoints."""
    try:
        async with db.unit_of_work() as uow:
            session = uow.session
            await batcher.check(session, batch)
            await batcher.write(session, batch, uow)
            await batcher.settle(session)
            outcome = outcome_of(batch)
            await _checkpoint(session, job, claim, done_before, done_after, outcome)
        return outcome
    except LeaseLost:
        raise
    except REFUSALS as exc:
        log.info(
            "import %s: batch ending at row %s refused (%s); retrying row by row",
            job.id,
            batch[-1].number if batch else 0,
            _reason(exc),
        )
    for r in batch:  # the first attempt's decisions are recomputed
        r.reset()
    async with db.unit_of_work() as uow:
        session = uow.session
        await batcher.check(session, batch)
        for r in batch:
            if r.action not in ("create", "update"):
                continue
            try:
                async with uow.savepoint():
                    await batcher.write(session, [r], uow)
            except REFUSALS as exc:
                r.action = "failed"
                r.errors.append(("", "", f"refused by the database: {_reason(exc)}"))
        outcome = outcome_of(batch)
        await _checkpoint(session, job, claim, done_before, done_after, outcome)
        return outcome


async def _commit_waiting(
    db: Database, batcher: Batcher, job: ImportJob, claim: int, batch: list[Row], before: int, after: int
) -> Outcome:
    """`commit_batch`, tried again while the database cannot be reached (the checkpoint's fence makes a repeat
    of a batch that did commit a LeaseLost, never a second write)."""
    for delay in (*BATCH_RETRY_DELAYS, None):
        try:
            return await commit_batch(db, batcher, job, claim, batch, before, after)
        except LeaseLost:
            raise
        except Exception as exc:
            if delay is None or not unreachable(exc):
                raise
            log.warning(
                "import %s: the database could not be reached (%s); again in %s s",
                job.id,
                _reason(exc),
                delay,
            )
            await asyncio.sleep(delay)
            for r in batch:
                r.reset()
    raise AssertionError("unreachable")


async def _checkpoint(
    session: Any, job: ImportJob, claim: int, done_before: int, done_after: int, outcome: Outcome
) -> None:
    result = await session.execute(
        update(ImportJob)
        .where(ImportJob.id == job.id, ImportJob.attempts == claim, ImportJob.rows_done == done_before)
        .values(
            rows_done=done_after,
            rows_created=ImportJob.rows_created + outcome.created,
            rows_updated=ImportJob.rows_updated + outcome.updated,
            rows_skipped=ImportJob.rows_skipped + outcome.skipped,
            rows_failed=ImportJob.rows_failed + outcome.failed,
        )
        .returning(ImportJob.cancel_requested)
    )
    row = result.first()
    if row is None:
        raise LeaseLost(job.id)
    if outcome.errors:
        lines = "".join(
            f"{job.tenant_id}\t{job.id}\t{n}\t{copy_text(c)}\t{copy_text(v[:1000])}\t{copy_text(why)}\n"
            for n, c, v, why in outcome.errors
        )
        await driver_of(await session.connection()).copy_to_table(
            "import_errors",
            source=io.BytesIO(lines.encode()),
            columns=["tenant_id", "job_id", "row", "column", "value", "reason"],
            format="text",
        )
    job.cancel_requested = bool(row[0])


# ---------------------------------------------------------------- converting, beside the database


_switching = {"converters": 0, "interval": 0.005}


def _fast_switching(on: bool) -> None:
    """A 0.5 ms switch interval while any converter thread runs (several runs and dry runs may overlap)."""
    if on:
        if _switching["converters"] == 0:
            _switching["interval"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switching["interval"], 0.0005))
        _switching["converters"] += 1
    else:
        _switching["converters"] -= 1
        if _switching["converters"] == 0:
            sys.setswitchinterval(_switching["interval"])


async def _thread_batches(batcher: Batcher, path: str, totals: dict[str, int]) -> AsyncIterator[list[Row]]:
    """Parse and convert in a thread: the event loop stays free to feed PostgreSQL the previous batch (the two
    interleave at a 0.5 ms switch interval of the interpreter lock, not a whole batch apart)."""
    job = batcher.job
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[Row] | BaseException | None] = asyncio.Queue(maxsize=2)
    stop = threading.Event()

    def hand_over(item: list[Row] | BaseException | None) -> None:
        # One put per item, waited for as long as the consumer takes (a batch can take minutes); scheduling the
        # put again after a wait would hand the same batch over twice (issue 10, item 14).
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                future.result(timeout=1)
                return
            except TimeoutError:
                if stop.is_set():
                    future.cancel()
                    return

    def produce() -> None:
        try:
            rows = source.data_rows(path, job.format, job.stats.get("encoding") or "utf-8")
            seen = [0]
            for raw in batches(fresh_rows(rows, job.rows_done, seen), batcher.batch_rows):
                if stop.is_set():
                    return
                hand_over(batcher.convert(raw))
            totals["data_rows"] = seen[0]
            hand_over(None)
        except BaseException as exc:  # handed to the consumer, which fails the job
            hand_over(exc)

    _fast_switching(True)
    producer = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not queue.empty():  # unblock a producer waiting to hand over
            queue.get_nowait()
        with contextlib.suppress(BaseException):
            await producer
        _fast_switching(False)


async def _child_batches(
    batcher: Batcher, spec: tuple[str, dict[str, Any]], path: str, totals: dict[str, int]
) -> AsyncIterator[list[Row]]:
    """Parse and convert in a child process (see `converter_process`); batches come back pickled."""
    from crm_kit.imports.converter_process import FRAME

    job = batcher.job
    factory, params = spec
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crm_kit.imports.converter_process",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        order = {
            "path": path,
            "format": job.format,
            "encoding": job.stats.get("encoding") or "utf-8",
            "resume_after": job.rows_done,
            "batch_rows": batcher.batch_rows,
            "factory": factory,
            "params": params,
        }
        child.stdin.write(json.dumps(order, ensure_ascii=False, default=str).encode() + b"\n")
        await child.stdin.drain()
        child.stdin.close()
        while True:
            try:
                (size,) = FRAME.unpack(await child.stdout.readexactly(FRAME.size))
                # Frames come only from our own child process.
                message = pickle.loads(await child.stdout.readexactly(size))
            except asyncio.IncompleteReadError:
                raise RuntimeError("the converter process ended without finishing") from None
            if message[0] == "batch":
                yield message[1]
            elif message[0] == "done":
                totals["data_rows"], totals["converter_peak_rss_kib"] = message[1], message[2]
                return
            elif message[1] == "bad_file":
                raise source.BadFile(message[2])
            else:
                raise RuntimeError(f"the converter process failed: {message[1]}: {message[2]}")
    finally:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()


# ---------------------------------------------------------------- the run


async def run(db: Database, importer: Importer, job: ImportJob, *, claim: int) -> None:
    """Run (or resume) a claimed job to its end. The caller renews the lease meanwhile."""
    token = context.bind(context.RequestContext(principal=principal_of(job), request_id=f"import-{job.id}"))
    try:
        await _run(db, importer, job, claim=claim)
    finally:
        context.reset(token)


async def _run(db: Database, importer: Importer, job: ImportJob, *, claim: int) -> None:
    batcher = await importer.batcher(db, job)
    totals: dict[str, int] = {"data_rows": 0}
    # The worker waits its turn for room in the spool (its lease is renewed meanwhile).
    async with source.spooled(db, job.id, f".{job.format}", size=job.size_bytes, wait=24 * 3600) as path:
        spec = batcher.child_spec() if job.size_bytes >= CHILD_PROCESS_BYTES else None
        if spec is not None:
            produced = _child_batches(batcher, spec, path, totals)
        else:
            produced = _thread_batches(batcher, path, totals)
        done, last = job.rows_done, 0
        try:
            async for item in produced:
                if item and item[0].number <= last:  # rows come once, in file order, or the run stops
                    raise RuntimeError(f"row {item[0].number} came again after row {last}")
                last = item[-1].number if item else last
                await _commit_waiting(db, batcher, job, claim, item, done, done + len(item))
                done += len(item)
                if job.cancel_requested:
                    break
        finally:
            await produced.aclose()
    if totals.get("converter_peak_rss_kib"):
        log.info("import %s: converter peak RSS %s MiB", job.id, totals["converter_peak_rss_kib"] // 1024)
    async with db.unit_of_work() as uow:
        current = await uow.session.get(ImportJob, job.id, with_for_update=True)
        if current is None or current.attempts != claim:
            raise LeaseLost(job.id)
        await batcher.finish(uow, current)
        current.status = "cancelled" if job.cancel_requested else "succeeded"
        current.rows_total = current.rows_done if job.cancel_requested else totals["data_rows"]
        if totals.get("converter_peak_rss_kib"):
            current.stats = {
                **(current.stats or {}),
                "converter_peak_rss_kib": totals["converter_peak_rss_kib"],
            }
        current.finished_at = utcnow()
        current.lease_until = None
        await jobs.drop_file(uow.session, current.id)
        jobs.emit_finished(uow, importer, current)


# ---------------------------------------------------------------- dry run


@dataclass
class DryRun:
    """What a dry run found over the first DRY_RUN_ROWS rows (nothing written but the job's choices)."""

    job: ImportJob
    rows: int
    outcome: Outcome
    preview: list[dict[str, Any]] = field(default_factory=list)


async def dry_run(db: Database, importer: Importer, *, request: Any, decision: Decision) -> DryRun:
    """Everything but the writes, over the first DRY_RUN_ROWS rows: the counts, the first problems, a preview.
    The choices of `request` (see `jobs.choose`) are kept on the job (a start without them uses these)."""
    what = "a dry run needs an uploaded file"
    chosen, options, prepared = await jobs.choose(db, importer, request=request, decision=decision, what=what)
    chosen.options, chosen.stats = options, {**(chosen.stats or {}), "prepared": prepared}
    batcher = await importer.batcher(db, chosen)
    totals = Outcome()
    preview: list[dict[str, Any]] = []
    seen = 0
    complete = True
    async with source.spooled(db, chosen.id, f".{chosen.format}", size=chosen.size_bytes) as path:
        # Parsed and converted in a thread, as a run is: the event loop only checks the batches.
        produced = _thread_batches(batcher, path, {})
        try:
            async for whole in produced:
                if seen >= DRY_RUN_ROWS:
                    complete = False
                    break
                batch = whole[: DRY_RUN_ROWS - seen]
                seen += len(batch)
                complete = complete and len(batch) == len(whole)
                async with db.read() as session:
                    await batcher.check(session, batch)
                for r in batch:
                    if len(preview) < PREVIEW_ROWS and r.action != "failed":
                        preview.append(_jsonable(batcher.preview(r)))
                got = outcome_of(batch)
                totals.add(got)
                totals.errors.extend(got.errors[: max(0, DRY_RUN_ERRORS - len(totals.errors))])
        except source.BadFile as exc:
            raise InvalidArgument.for_field("file", str(exc)) from exc
        finally:
            await produced.aclose()
    async with db.unit_of_work() as uow:
        job = await jobs.get(uow.session, request.id, lock=True)
        jobs.expect_uploaded(job, what)
        jobs.apply_choice(job, chosen, options, prepared)
        job.rows_total = seen if complete else 0
        job.stats = {**(job.stats or {}), "dry_run": {"rows": seen, "complete": complete}}
    return DryRun(job=job, rows=seen, outcome=totals, preview=preview)


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | str | int | float):
        return value
    return str(value)
