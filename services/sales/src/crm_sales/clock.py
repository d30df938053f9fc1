"""The service clock. Every rule that depends on time (reclaim, cooldown, overdue) asks `clock.now()`, so
operators and tests can run the reclaim job "as of" another moment and tests can move time forward."""

from __future__ import annotations

import datetime as dt

from crm_kit.db import utcnow


class Clock:
    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def now(self) -> dt.datetime:
        return utcnow() + self.offset

    def advance(self, **delta: float) -> None:
        """Move this clock forward (tests only: production never changes the offset)."""
        self.offset += dt.timedelta(**delta)

    def reset(self) -> None:
        self.offset = dt.timedelta()
