"""What a service writes to import something: an `Importer` per kind of record, and the `Batcher` it makes for
each run. Everything else (upload, mapping, dry run, the job and its worker, progress, the error report) is the
kit's; see `crm_kit.imports`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crm_kit.db import Database, UnitOfWork
from crm_kit.imports.mapping import Vocabulary
from crm_kit.imports.models import ImportJob
from crm_kit.policy import Decision

BATCH_ROWS = 2000


@dataclass
class Converted:
    """A file row as the service's record: its values, and (column, value, reason) of each problem found
    without the database."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Row:
    """One data row of the file on its way in. `action` is decided per batch: "create", "update" (of
    `duplicate_of`), "skip" or "failed"; `errors` are what the error report says about it."""

    number: int
    converted: Any  # a Converted (or a service's subclass)
    action: str = "create"
    duplicate_of: str = ""
    # What the service made of the row ahead of the database, off the event loop (e.g. a COPY line); None when
    # the values changed since.
    record: Any = None
    errors: list[tuple[str, str, str]] = field(default_factory=list)

    def reset(self) -> None:
        """Back to what conversion alone decided (a batch is retried row by row after a refusal)."""
        self.errors, self.duplicate_of = list(self.converted.errors), ""
        self.action = "failed" if self.errors else "create"


def new_row(number: int, converted: Any) -> Row:
    row = Row(number, converted)
    row.reset()
    return row


@dataclass
class Outcome:
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[tuple[int, str, str, str]] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.created += other.created
        self.updated += other.updated
        self.skipped += other.skipped
        self.failed += other.failed


def outcome_of(batch: list[Row]) -> Outcome:
    out = Outcome()
    for r in batch:
        if r.action == "create":
            out.created += 1
        elif r.action == "update":
            out.updated += 1
        elif r.action == "skip":
            out.skipped += 1
        else:
            out.failed += 1
        out.errors.extend((r.number, c, v, reason) for c, v, reason in r.errors)
    return out


class Batcher:
    """One run of one import: converts rows, decides each row's action, writes a batch. Made per run (and per
    dry run) by `Importer.batcher`; holds what the run needs across batches (rules, lookup caches)."""

    batch_rows = BATCH_ROWS

    def __init__(self, job: ImportJob):
        self.job = job

    def convert(self, rows: list[tuple[int, list[str]]]) -> list[Row]:
        """File rows (number, cells) → Rows. Pure (no database): it runs in a thread, or in a child process."""
        raise NotImplementedError

    def child_spec(self) -> tuple[str, dict[str, Any]] | None:
        """For files big enough to convert in a child process: ("module:function", plain JSON values). The
        child calls function(values) once and uses what it returns as `convert`. None: always in a thread."""
        return None

    async def check(self, session: Any, batch: list[Row]) -> None:
        """Decide each live row's action against the database (references, duplicates), writing nothing: the
        dry run calls it too."""

    async def write(self, session: Any, batch: list[Row], uow: UnitOfWork) -> None:
        """Write the batch's creates and updates in the caller's transaction (never commit). Called with the
        whole batch, or, after the database refused the batch, with one row at a time in a savepoint."""
        raise NotImplementedError

    async def settle(self, session: Any) -> None:
        """After a whole batch is written, in its transaction (e.g. index maintenance)."""

    def preview(self, row: Row) -> dict[str, Any]:
        """What a dry run shows of a row that would be written."""
        return {
            k: v
            for k, v in row.converted.values.items()
            if k not in ("id", "tenant_id", "created_by") and not k.startswith("search_")
        }

    async def finish(self, uow: UnitOfWork, job: ImportJob) -> None:
        """Once, after the last batch, in the transaction that marks the job finished (e.g. set-based rules)."""


class Importer:
    """One kind of import of a service. Subclasses set `target`, `object`, `vocabulary` and make batchers."""

    # What the rows become, as stored on the job ("contacts", "leads").
    target: str = ""
    # The permission object whose "import" action starting, reading and cancelling the import needs.
    object: str = ""
    vocabulary: Vocabulary

    async def custom_fields(self, session: Any, tenant_id: str) -> list[tuple[str, str, str]]:
        """The tenant's own fields: (key, label_zh, label_en), mapped as `<custom_prefix><key>`."""
        return []

    def check_writable(self, decision: Decision, fields: list[str]) -> None:
        """Refuse (403) a mapping that fills fields the starter may not write."""
        decision.check_writable(fields)

    def rule_field(self, field: str) -> str:
        """The record's field a mapped import field fills, as field rules name it (hidden values of it are left
        out of the reports)."""
        return field

    async def prepare(
        self, db: Database, job: ImportJob, request: Any, decision: Decision
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """At a dry run and at the start, with the caller's credential (the worker runs without it): the
        options the person chose in `request` (shown on the job) and what the run needs that only the caller
        can fetch (kept with the job). `job.mapping` and `job.owner_id` are the chosen ones."""
        return {}, {}

    async def batcher(self, db: Database, job: ImportJob) -> Batcher:
        raise NotImplementedError

    def finished_event(self, job: ImportJob) -> Any:
        """The event recorded when the job ends (its audit entry), or None."""
        return None

    def message_fields(self, job: ImportJob) -> dict[str, Any]:
        """Fields of the service's job message the kit does not know (e.g. customers' `target` enum)."""
        return {}
