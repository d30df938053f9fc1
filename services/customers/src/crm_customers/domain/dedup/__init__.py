"""Duplicate rules, checks, scans and merges on accounts and contacts.

Account and contact writes call `check(uow, "account" | "contact", fields, mode="create" | "update")` and then
`result.raise_if_blocked()`; `result.warnings` are the candidates a warn rule found, for the answer.
"""

from crm_customers.domain.dedup.matching import Candidate, Result, check

__all__ = ["Candidate", "Result", "check"]
