"""Duplicate rules, checks, scans and merges on accounts and contacts.

Account and contact writes call `enforce(uow, "account" | "contact", row, mode="create" | "update", read=...)`:
it runs `check`, raises 409 `duplicate_found` when a "block" rule matched (the problem lists the candidates in
`duplicates`), and leaves what a "warn" rule found on `row.duplicate_warnings` (a list of `DuplicateCandidate`
messages) for the answer. Either way the candidates are shown as `read` (the caller's read decision on the
record type) allows: see `conceal`.
"""

from __future__ import annotations

from typing import Any

from crm_kit.policy import Decision

from crm_customers.domain.dedup.matching import Candidate, Result, bare, candidate_json, check, conceal


async def enforce(uow: Any, object_type: str, row: Any, *, mode: str, read: Decision | None = None) -> Result:
    result = await check(uow, object_type, row, mode=mode, exclude_id=getattr(row, "id", None))
    shown = []
    if result.action in ("block", "warn"):
        shown = result.to_pb()
        if read is None:  # nothing known of what the caller may see: by id only
            shown = [bare(c) for c in shown]
        else:
            await conceal(uow.session, object_type, read, shown)
    result.raise_if_blocked(shown)
    row.duplicate_warnings = shown if result.action == "warn" else []
    return result


def warnings_of(row: Any) -> list[Any]:
    """What `enforce` left on a row for the answer (nothing when the rules were not checked)."""
    return list(getattr(row, "duplicate_warnings", None) or [])


__all__ = ["Candidate", "Result", "bare", "candidate_json", "check", "conceal", "enforce", "warnings_of"]
