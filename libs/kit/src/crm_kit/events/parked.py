"""Parked events: what the outbox relay could not publish because NATS refused it for good; see, retry, discard.

The relay parks an event NATS refuses for a reason a retry cannot change (larger than the server's max_payload,
refused by the stream), logs it at error level and goes on with the other events (`crm_kit.events.relay`).
Later events of the same aggregate wait behind the parked one, so consumers never see them out of order.
Parked events live in the service's own outbox table, so this command talks to the service's database:

    python -m crm_kit.events.parked list
    python -m crm_kit.events.parked retry 1234 1240     # or: retry --all  (after fixing the cause)
    python -m crm_kit.events.parked discard 1234        # the event is dropped; its aggregate's later events flow

(`kubectl exec deploy/crm-identity -- python -m crm_kit.events.parked list` in a cluster; the database comes
from CRM_DATABASE_URL, as for the service.) Retry and discard wake the active relay (NOTIFY), which publishes
the retried event, or parks it again with the new error, and then the events that waited behind it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass

import asyncpg
from crm.common.v1 import event_pb2

from crm_kit.events.outbox import OUTBOX_CHANNEL
from crm_kit.leader import asyncpg_dsn

LIST = (
    "SELECT p.seq, p.id, p.subject, p.tenant_id, p.aggregate_id, p.parked_at, p.parked_error, "
    "length(p.envelope) AS size, p.envelope, "
    "(SELECT count(*) FROM outbox_events w WHERE w.published_at IS NULL AND w.parked_at IS NULL "
    "AND p.aggregate_id <> '' AND w.tenant_id = p.tenant_id AND w.aggregate_id = p.aggregate_id "
    "AND w.seq > p.seq) AS waiting "
    "FROM outbox_events p WHERE p.parked_at IS NOT NULL ORDER BY p.seq LIMIT $1"
)
RETRY = (
    "UPDATE outbox_events SET parked_at = NULL, parked_error = NULL "
    "WHERE seq = any($1::bigint[]) AND parked_at IS NOT NULL RETURNING seq"
)
DISCARD = "DELETE FROM outbox_events WHERE seq = any($1::bigint[]) AND parked_at IS NOT NULL RETURNING seq"


@dataclass(frozen=True)
class ParkedEvent:
    seq: int  # in the outbox: what retry and discard take
    event_id: str
    subject: str
    tenant_id: str
    aggregate: str
    action: str
    parked_at: str
    error: str
    size: int  # bytes of the envelope
    waiting: int  # later events of its aggregate held back behind it


def _event(row: asyncpg.Record) -> ParkedEvent:
    envelope = event_pb2.EventEnvelope()
    try:
        envelope.ParseFromString(row["envelope"])
    except Exception:  # show what there is
        envelope = event_pb2.EventEnvelope()
    aggregate = f"{envelope.aggregate_type}/{row['aggregate_id']}" if row["aggregate_id"] else ""
    return ParkedEvent(
        seq=row["seq"],
        event_id=row["id"],
        subject=row["subject"],
        tenant_id=row["tenant_id"],
        aggregate=aggregate,
        action=envelope.action,
        parked_at=row["parked_at"].isoformat(),
        error=row["parked_error"] or "",
        size=row["size"],
        waiting=row["waiting"],
    )


async def list_parked(conn: asyncpg.Connection, *, limit: int = 1000) -> list[ParkedEvent]:
    """The parked events of this database, oldest first."""
    return [_event(row) for row in await conn.fetch(LIST, limit)]


async def retry(conn: asyncpg.Connection, seqs: list[int]) -> list[int]:
    """Hand parked events back to the relay (once the cause is fixed); returns the seqs that were parked."""
    done = [r["seq"] for r in await conn.fetch(RETRY, seqs)]
    await _wake_relay(conn, done)
    return done


async def discard(conn: asyncpg.Connection, seqs: list[int]) -> list[int]:
    """Drop parked events for good (say why in the ticket); the events behind them are published next."""
    done = [r["seq"] for r in await conn.fetch(DISCARD, seqs)]
    await _wake_relay(conn, done)
    return done


async def _wake_relay(conn: asyncpg.Connection, seqs: list[int]) -> None:
    if seqs:
        await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)


async def _main(args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(args.database_url))
    try:
        if args.command == "list":
            events = await list_parked(conn, limit=args.limit)
            for parked in events:
                print(json.dumps(asdict(parked), ensure_ascii=False))
            print(f"{len(events)} parked event(s)", file=sys.stderr)
            return 0
        seqs = list(args.seq)
        if getattr(args, "all", False):
            seqs = [e.seq for e in await list_parked(conn)]
        done = await (retry if args.command == "retry" else discard)(conn, seqs)
        for seq in done:
            print(f"{'retried' if args.command == 'retry' else 'discarded'} {seq}")
        missing = sorted(set(seqs) - set(done))
        for seq in missing:
            print(
                f"parked event {seq}: not parked (retried or discarded already, or no such event)",
                file=sys.stderr,
            )
        return 1 if missing else 0
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crm_kit.events.parked", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--database-url", default=os.environ.get("CRM_DATABASE_URL", ""))
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the parked events, one JSON object per line")
    listing.add_argument("--limit", type=int, default=1000)
    again = commands.add_parser("retry", help="hand parked events back to the relay")
    again.add_argument("seq", type=int, nargs="*")
    again.add_argument("--all", action="store_true", help="every parked event")
    drop = commands.add_parser("discard", help="drop parked events for good")
    drop.add_argument("seq", type=int, nargs="+")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: set CRM_DATABASE_URL or pass --database-url")
    if args.command == "retry" and not args.seq and not args.all:
        parser.error("retry: give outbox seqs or --all")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
