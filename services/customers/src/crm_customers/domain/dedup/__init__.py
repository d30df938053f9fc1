"""Duplicate rules, checks, scans and merges on accounts and contacts.

Account and contact writes call `enforce(uow, "account" | "contact", row, mode="create" | "update")`: it runs
`check`, raises 409 `duplicate_found` naming the candidates when a "block" rule matched, and leaves what a
"warn" rule found on `row.duplicate_warnings` (a list of `DuplicateCandidate` messages) for the answer.
"""

from __future__ import annotations

from typing import Any

from crm_customers.domain.dedup.matching import Candidate, Result, check


async def enforce(uow: Any, object_type: str, row: Any, *, mode: str) -> Result:
    result = await check(uow, object_type, row, mode=mode, exclude_id=getattr(row, "id", None))
    result.raise_if_blocked()
    row.duplicate_warnings = [c.to_pb() for c in result.warnings]
    return result


__all__ = ["Candidate", "Result", "check", "enforce"]
