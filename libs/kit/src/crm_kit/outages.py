"""Whether an error says the infrastructure is unreachable (the database, NATS), not that the work failed.

An outage is waited out, never counted as the work's failure: a consumer keeps the event without spending an
attempt (crm_kit.events.consumer), and a call answers UNAVAILABLE, which clients retry, instead of an internal
error (crm_kit.grpc_server)."""

from __future__ import annotations

import asyncpg
import nats.errors

# SQLSTATEs of a database that cannot be reached or is refusing work right now (connection exceptions,
# operator intervention, too many connections, "database is not currently accepting connections").
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53300", "55000")


def infrastructure_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database or NATS is unreachable, rather than the handler failed.

    Other errors, a socket error among them (a handler's mail server may be down), are decided by probing the
    database and NATS (`ConsumerRunner._infrastructure_down`): the handler's own dependencies are its failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
            return True
        if isinstance(
            current,
            nats.errors.ConnectionClosedError
            | nats.errors.ConnectionReconnectingError
            | nats.errors.NoServersError
            | nats.errors.StaleConnectionError,
        ):
            return True
        if isinstance(current, asyncpg.PostgresError) and (current.sqlstate or "").startswith(
            _UNAVAILABLE_SQLSTATES
        ):
            return True
        if getattr(current, "connection_invalidated", False):  # SQLAlchemy: the connection was lost
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False
