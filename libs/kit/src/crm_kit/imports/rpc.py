"""The import RPCs, written once for every service: a service's servicer method is one line that hands its
request and its response class to one of these. Messages are filled by field name, so a service may use
crm.common.v1's import messages or its own with the same field names (customers' older ones).

Permissions: every call needs the "import" action on the importer's object (for a job: its target's), and the
job inside that action's data scope (a job is its uploader's and its records' owner's: `Decision.sees`); another
tenant's job, or one outside the scope, is a 404 like a missing one. Listing shows the jobs the caller may reach
so.
What a report or a dry run quotes of the file goes through the read step too: values of columns mapped to fields
hidden from the caller (by "read" or "import") are left out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from crm_kit.context import caller
from crm_kit.db import Database
from crm_kit.errors import InvalidArgument, not_found
from crm_kit.imports import jobs, pipeline, report
from crm_kit.imports.importer import Importer
from crm_kit.imports.models import ImportJob
from crm_kit.policy import Decision, PolicyCache


class ImportRpcs:
    def __init__(
        self, *, db: Database, policies: PolicyCache, importers: Mapping[str, Importer], worker: Any = None
    ):
        self.db = db
        self.policies = policies
        self.importers = importers
        self.worker = worker

    async def _authorize(self, importer: Importer) -> Decision:
        return (await self.policies.decide(caller(), importer.object, "import")).require()

    async def _job(self, job_id: str) -> tuple[ImportJob, Importer, Decision]:
        async with self.db.read() as session:
            job = await jobs.get(session, job_id)
        importer = self.importers.get(job.target)
        if importer is None:  # a target this service no longer imports
            raise not_found("import", job_id)
        decision = await self._authorize(importer)
        if not _sees(decision, job):
            raise not_found("import", job_id)
        return job, importer, decision

    async def _hides(self, importer: Importer) -> Callable[[str], bool]:
        """Whether an import field is hidden from the caller (by their "read" or "import" field rules)."""
        principal = caller()
        decisions = [await self.policies.decide(principal, importer.object, a) for a in ("read", "import")]
        return lambda field: any(d.is_hidden(importer.rule_field(field)) for d in decisions)

    async def _hidden_columns(self, job: ImportJob, importer: Importer) -> frozenset[str]:
        """The file's columns whose values the caller may not see: mapped to a field hidden from them."""
        hides = await self._hides(importer)
        return frozenset(m["column"] for m in job.mapping or () if m.get("field") and hides(m["field"]))

    def _job_message(self, message: Any, job: ImportJob) -> Any:
        importer = self.importers.get(job.target)
        return jobs.fill_job(message, job, **(importer.message_fields(job) if importer else {}))

    def _answer(self, response_cls: Any, job: ImportJob) -> Any:
        answer = response_cls()
        self._job_message(answer.import_job, job)
        return answer

    def _wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def upload(self, request_iterator: Any, response_cls: Any, *, target: Callable[[Any], str]) -> Any:
        """A client stream: the header (the file's name and type, and what `target` reads from it), then the
        file's bytes in chunks."""
        stream = request_iterator.__aiter__()
        first = await anext(stream, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument.for_field("header", "the first message must be the file's header")
        header = first.header
        importer = self.importers[target(header)]
        await self._authorize(importer)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in stream:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument.for_field("chunk", "after the header come only chunks")
                yield message.chunk

        job = await jobs.upload(
            self.db,
            importer,
            file_name=header.file.file_name,
            content_type=header.file.content_type,
            chunks=chunks(),
        )
        return self._answer(response_cls, job)

    async def get(self, request: Any, response_cls: Any) -> Any:
        job, _, _ = await self._job(request.id)
        return self._answer(response_cls, job)

    async def list(self, request: Any, response_cls: Any) -> Any:
        async with self.db.read() as session:
            rows, cursor = await jobs.list_jobs(session, page_request=request.page)
        decisions = {
            t: await self.policies.decide(caller(), i.object, "import") for t, i in self.importers.items()
        }
        if not any(d.allowed for d in decisions.values()):
            await self._authorize(next(iter(self.importers.values())))
        answer = response_cls(next_cursor=cursor)
        for job in rows:
            decision = decisions.get(job.target)
            if decision is not None and _sees(decision, job):
                self._job_message(answer.items.add(), job)
        return answer

    async def dry_run(self, request: Any, response_cls: Any) -> Any:
        _, importer, decision = await self._job(request.id)
        found = await pipeline.dry_run(self.db, importer, request=request, decision=decision)
        hides = await self._hides(importer)
        hidden = await self._hidden_columns(found.job, importer)
        answer = self._answer(response_cls, found.job)
        job, totals = answer.import_job, found.outcome
        job.rows_done = found.rows
        job.rows_created, job.rows_updated = totals.created, totals.updated
        job.rows_skipped, job.rows_failed = totals.skipped, totals.failed
        for n, c, v, why in totals.errors:
            answer.errors.add(row=n, column=c, value="" if c in hidden else v, reason=why)
        for values in found.preview:
            answer.preview.add().update({k: v for k, v in values.items() if not hides(k)})
        return answer

    async def start(self, request: Any, response_cls: Any) -> Any:
        _, importer, decision = await self._job(request.id)
        job = await jobs.start(self.db, importer, request=request, decision=decision)
        self._wake()
        return self._answer(response_cls, job)

    async def cancel(self, request: Any, response_cls: Any) -> Any:
        await self._job(request.id)
        return self._answer(response_cls, await jobs.cancel(self.db, job_id=request.id))

    async def list_errors(self, request: Any, response_cls: Any) -> Any:
        job, importer, _ = await self._job(request.id)
        hidden = await self._hidden_columns(job, importer)
        async with self.db.read() as session:
            rows, cursor = await report.list_errors(session, job_id=job.id, page_request=request.page)
        answer = response_cls(next_cursor=cursor)
        for e in rows:
            answer.items.add(
                row=e.row, column=e.column, value="" if e.column in hidden else e.value, reason=e.reason
            )
        return answer

    async def download_errors(self, request: Any, response_cls: Any) -> AsyncIterator[Any]:
        """The error report, streamed: the header (file name and type) first, then chunks."""
        job, importer, _ = await self._job(request.id)
        hidden = await self._hidden_columns(job, importer)
        formats = request.DESCRIPTOR.fields_by_name["format"].enum_type.values_by_number
        xlsx = request.format in formats and formats[request.format].name.endswith("_XLSX")
        locale = getattr(request, "locale", "") if "locale" in request.DESCRIPTOR.fields_by_name else ""
        file = report.error_report(self.db, job=job, xlsx=xlsx, locale=locale, hidden_columns=hidden)
        first = response_cls()
        first.header.file_name, first.header.content_type = file.file_name, file.content_type
        yield first
        async for chunk in file.chunks:
            yield response_cls(chunk=chunk)


def _sees(decision: Decision, job: ImportJob) -> bool:
    """Whether the job is inside the caller's data scope: the records' owner (and department) and the uploader."""
    return decision.sees(caller(), job.owner_id, job.department_id, (job.created_by,))
