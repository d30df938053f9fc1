"""The outbox relay: publishes committed outbox rows to JetStream, in `seq` order, then marks them published.

Why it is built this way:

- One active relay per database. Every replica of a service runs a relay, but only the leader of the
  database's relay lock publishes (`crm_kit.leader.Leader`: a PostgreSQL session advisory lock on a dedicated
  connection; standbys wait on it and take over at once when the active replica dies): no row published by two
  relays at the same time, and a single publisher keeps `seq` order. The relay reads and marks rows on the very
  connection that holds the lock, so a relay that lost its lock also fails its next query and stops before it
  can publish again.
- At least once, de-duplicated. Rows are marked only after JetStream acked them. A crash between the ack and the
  mark makes the next relay publish those rows again, with the same `Nats-Msg-Id` (the envelope id), and
  JetStream's duplicate window drops the copies; the ack says `duplicate` and the relay counts it as such.
- Low latency. `Database.after_commit_hooks` wakes the relay in this process right after a commit that wrote
  events; a trigger NOTIFYs the channel `crm_outbox` on every insert, which wakes the active relay in whichever
  replica it runs; a poll every `relay_poll_interval` catches anything both missed.
- Throughput. A batch (up to `relay_batch_size` rows) is published asynchronously, all acks awaited together,
  and marked with one UPDATE.
- NATS down. Writes never wait for NATS: they only touch PostgreSQL. The relay retries the batch with
  exponential backoff (tenacity, capped at `relay_max_backoff`) for as long as it takes, and publishes
  everything once NATS is back. PostgreSQL down: it reconnects, with the same backoff, and waits for the lock
  again.
- Marking is asynchronous-commit (`synchronous_commit=off` on the relay's connection): a mark lost in a
  PostgreSQL crash only means a re-publish, which JetStream drops as a duplicate, and it keeps a WAL flush off
  the relay's path.
- Retention. Published rows keep `published_at` and are deleted `outbox_retention` later (24 h by default) for
  debugging; inbox rows `inbox_retention` later (7 days, the stream's max age, so a replay of the whole stream
  is still de-duplicated). The active relay prunes both, in bounded batches.

- A poisoned event does not stop the stream. An event NATS refuses for good (larger than the server's
  max_payload, refused by the stream: anything but an outage) is parked: its row gets `parked_at` and the
  error, an error-level log line says so, and the relay goes on with the rest. Later events of the same
  aggregate (same tenant and aggregate id) wait behind it, so no consumer sees them out of order; other
  aggregates flow. An operator lists, retries or discards parked events with `python -m crm_kit.events.parked`.
  (Unit-of-work writes cannot make such an event: `MAX_EVENT_BYTES` refuses it at emit.) A NATS outage is not
  a refusal: the relay waits and retries, as above. The size is checked against the server's max_payload
  before sending; a refusal JetStream reports only in its ack (a stream's own limits) parks the event too,
  but later events of its aggregate sent in the same batch are already out.

Ordering: events of one aggregate are published in the order their transactions committed as long as writers
of one aggregate serialize on it (SELECT … FOR UPDATE or a version check), which every aggregate write must do
anyway. Events of different aggregates have no order between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import PubAck
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from crm_kit import telemetry
from crm_kit.db import Database
from crm_kit.errors import describe
from crm_kit.events.config import EventSettings
from crm_kit.events.outbox import OUTBOX_CHANNEL
from crm_kit.events.subjects import namespaced
from crm_kit.leader import Leader, asyncpg_dsn

log = logging.getLogger("crm.events.relay")

# The advisory lock key of "the active relay of this database" ("CRM" "REL"); one database per service.
RELAY_LOCK = 0x43524D52454C

# Marks the rows published since the last round trip ($2) and fetches the next batch, in one statement: the
# SELECT sees the snapshot from before the UPDATE, hence the explicit exclusion.
# Parked rows, and the later rows of their aggregates, are left out (an empty aggregate id is no aggregate).
FETCH_AND_MARK = (
    "WITH marked AS (UPDATE outbox_events SET published_at = now() WHERE seq = any($2::bigint[])) "
    "SELECT seq, id, subject, tenant_id, aggregate_id, envelope, traceparent FROM outbox_events e "
    "WHERE published_at IS NULL AND parked_at IS NULL AND NOT (seq = any($2::bigint[])) "
    "AND NOT EXISTS (SELECT 1 FROM outbox_events p WHERE p.parked_at IS NOT NULL AND e.aggregate_id <> '' "
    "AND p.tenant_id = e.tenant_id AND p.aggregate_id = e.aggregate_id AND p.seq < e.seq) "
    "ORDER BY seq LIMIT $1"
)
PARK = (
    "UPDATE outbox_events o SET parked_at = now(), parked_error = p.error "
    "FROM unnest($1::bigint[], $2::text[]) AS p(seq, error) WHERE o.seq = p.seq"
)
MARK = "UPDATE outbox_events SET published_at = now() WHERE seq = any($1::bigint[])"
PRUNE_OUTBOX = (
    "DELETE FROM outbox_events WHERE seq IN (SELECT seq FROM outbox_events "
    "WHERE published_at < now() - make_interval(secs => $1) ORDER BY published_at LIMIT $2)"
)
PRUNE_INBOX = (
    "DELETE FROM inbox WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM inbox "
    "WHERE handled_at < now() - make_interval(secs => $1) ORDER BY handled_at LIMIT $2)"
)
# Requests' idempotency records live as long as the gateway remembers keys (24 h) and a little more.
PRUNE_IDEMPOTENT_REQUESTS = (
    "DELETE FROM idempotent_requests WHERE key IN (SELECT key FROM idempotent_requests "
    "WHERE created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2)"
)
IDEMPOTENT_REQUEST_RETENTION = 48 * 3600.0
PRUNE_BATCH = 5000

# Events parked because NATS refused them for good: what operators watch (with `python -m crm_kit.events.parked`).
PARKED = telemetry.counter(
    "crm.events.parked", "outbox events NATS refused for good, waiting for an operator"
)


class _RecentSeqs:
    """The last few thousand seqs this relay fetched, to ignore the NOTIFY of rows it already has."""

    def __init__(self, size: int = 8192):
        self.order: deque[int] = deque()
        self.members: set[int] = set()
        self.size = size

    def add(self, seq: int) -> None:
        if seq in self.members:
            return
        self.order.append(seq)
        self.members.add(seq)
        if len(self.order) > self.size:
            self.members.discard(self.order.popleft())

    def __contains__(self, seq: int) -> bool:
        return seq in self.members

    def clear(self) -> None:
        self.order.clear()
        self.members.clear()


class _Stopped(Exception):
    """Raised inside the relay when stop() interrupts a wait."""


class _Unpublished(Exception):
    """Some rows of a batch were not acked by JetStream (NATS down, slow, or refusing); retried with backoff."""

    def __init__(self, count: int, cause: BaseException | None):
        super().__init__(f"{count} events not acked by JetStream: {cause!r}")
        self.cause = cause


class _TooLarge(nats.errors.MaxPayloadError):
    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"nats: maximum payload exceeded: {self.detail}"


def refused_for_good(exc: BaseException | None) -> bool:
    """Whether NATS refused this one message in a way a retry cannot change (as opposed to an outage, a
    timeout or JetStream being unavailable, which the relay waits out)."""
    if isinstance(
        exc, nats.errors.MaxPayloadError | nats.errors.BadSubjectError | nats.errors.BadHeaderError
    ):
        return True
    # JetStream's own refusals of a message (a 4xx: over the stream's max message size, wrong stream...);
    # 503 (no JetStream, no stream yet) and timeouts are outages.
    if isinstance(exc, nats.js.errors.APIError) and not isinstance(
        exc, nats.js.errors.ServiceUnavailableError
    ):
        return exc.code is not None and 400 <= exc.code < 500 and exc.code not in (408, 429)
    return False


def _header_bytes(headers: dict[str, str]) -> int:
    """The size of NATS's header block for `headers` (counted by the server against max_payload)."""
    return len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())


class OutboxRelay:
    """Publishes a database's outbox. `start()`, then `stop()`; several per database are safe (one is active)."""

    def __init__(
        self,
        database: Database,
        nc: NATS,
        settings: EventSettings | None = None,
        *,
        name: str = "outbox-relay",
    ):
        self.database = database
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings or EventSettings()
        self.name = name
        self.dsn = asyncpg_dsn(database.url)
        # Events this relay stored in JetStream first, and publishes JetStream reported as duplicates.
        self.published = 0
        self.duplicates = 0
        self.parked = 0
        # Set while the active relay waits for work (all caught up); for tests and health checks.
        self.idle = asyncio.Event()
        self._wake = asyncio.Event()
        self._retry = asyncio.Event()
        # Acked but not yet marked: marked by the next fetch, in the same round trip (see `_lead`).
        self._unmarked: list[int] = []
        # Refused for good: (seq, error), parked by `_lead` before its next fetch.
        self._to_park: list[tuple[int, str]] = []
        self._seen = _RecentSeqs()
        self.leader = Leader(
            self.dsn,
            RELAY_LOCK,
            self._lead_and_reset,
            name=name,
            server_settings={"synchronous_commit": "off"},
            max_backoff=self.settings.relay_max_backoff,
            wake=self.wake,
        )

    @property
    def active(self) -> asyncio.Event:
        """Set while this relay holds the lock and publishes; for health checks and tests."""
        return self.leader.active

    @property
    def backend_pid(self) -> int | None:
        return self.leader.backend_pid

    # -- lifecycle -------------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Publish now rather than at the next poll; registered in `Database.after_commit_hooks`."""
        self._wake.set()

    def retry_now(self) -> None:
        """End a publish backoff early (NATS reconnected): the next attempt will likely succeed."""
        self._retry.set()

    async def start(self) -> None:
        if self.wake not in self.database.after_commit_hooks:
            self.database.after_commit_hooks.append(self.wake)
        await self.leader.start()

    async def stop(self) -> None:
        """Finish the batch in flight (its acks and its mark), release the lock, return."""
        with contextlib.suppress(ValueError):
            self.database.after_commit_hooks.remove(self.wake)
        await self.leader.stop()

    # -- the loop --------------------------------------------------------------------------------------------

    async def _lead_and_reset(self, conn: asyncpg.Connection) -> None:
        try:
            await self._lead(conn)
        except _Stopped:
            return
        finally:
            self.idle.clear()
            self._unmarked.clear()
            self._to_park.clear()
            self._seen.clear()

    async def _lead(self, conn: asyncpg.Connection) -> None:
        """Publish while holding the lock.

        Under load, marking is folded into the next fetch rather than sent on its own: a round trip fewer per
        batch. When the relay is caught up and idle it marks at once instead, so that the mark is not in front
        of the next event's fetch. A mark that waits is harmless: should this relay die first, the rows are
        published again and JetStream drops the copies. A batch shorter than `relay_batch_size` means the relay
        is caught up, so it waits for the next wake-up instead of asking again.
        """
        await conn.add_listener(OUTBOX_CHANNEL, self._notified)
        fetch = await conn.prepare(FETCH_AND_MARK)
        next_prune = 0.0
        batch_size = self.settings.relay_batch_size
        try:
            while not self.leader.stopping.is_set():
                self._wake.clear()
                marking, self._unmarked = self._unmarked, []
                rows = await fetch.fetch(batch_size, marking)
                for row in rows:
                    self._seen.add(row["seq"])
                if rows:
                    await self._publish(rows)
                    if self._to_park:
                        await self._park(conn)
                    if len(rows) == batch_size:
                        continue
                    if not self._wake.is_set():
                        # Caught up and nothing waiting: mark now, while there is time, rather than in front
                        # of the next event's fetch.
                        marking, self._unmarked = self._unmarked, []
                        await conn.execute(MARK, marking)
                if time.monotonic() >= next_prune:
                    await self._prune(conn)
                    next_prune = time.monotonic() + self.settings.prune_interval
                await self._wait_for_work()
        finally:
            if self._to_park and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await self._park(conn)
            if self._unmarked and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.execute(MARK, self._unmarked)
                self._unmarked = []

    async def _wait_for_work(self) -> None:
        """Caught up: wait for a wake-up or the poll interval (whose fetch also flushes pending marks)."""
        if self._wake.is_set():
            return
        self.idle.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.relay_poll_interval):
                await self._wake.wait()
        self.idle.clear()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        """NOTIFY from the trigger, carrying the highest seq the transaction inserted."""
        try:
            seq = int(payload)
        except ValueError:
            seq = None
        if seq is None or seq not in self._seen:
            self._wake.set()

    # -- publishing ------------------------------------------------------------------------------------------

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        """Publish `rows` until JetStream acked or refused every one; retried with backoff while NATS fails.

        Retries go one event at a time, each waiting for its answer: nats-py's asynchronous publish reports
        JetStream's refusal of a message only as a missing ack, which looks like an outage, while a plain
        publish raises it, so the event is parked rather than retried forever."""
        remaining, _ = await self._publish_once(list(rows))
        if not remaining:
            return  # the usual case, without setting up the retry machinery
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Unpublished),
            wait=wait_exponential_jitter(multiplier=0.05, max=self.settings.relay_max_backoff, jitter=0.1),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                remaining, cause = await self._publish_once(remaining, one_by_one=True)
                if remaining:
                    raise _Unpublished(len(remaining), cause)

    async def _publish_once(
        self, rows: list[asyncpg.Record], *, one_by_one: bool = False
    ) -> tuple[list[asyncpg.Record], BaseException | None]:
        """One attempt: publish all, await all acks; queue the acked rows for marking, park the refused ones;
        return the rest and why."""
        self._retry.clear()
        if not self.nc.is_connected:
            # While reconnecting the client would buffer the publishes and flush stale copies later; just wait.
            return rows, nats.errors.ConnectionReconnectingError()
        namespace = self.settings.namespace
        sent: list[tuple[asyncpg.Record, asyncio.Future[PubAck]]] = []
        acked: list[tuple[asyncpg.Record, PubAck]] = []
        # Aggregates with an event refused for good in this batch: their later events wait behind it.
        held: set[tuple[str, str]] = set()
        cause: BaseException | None = None
        unsent = len(rows)
        for i, row in enumerate(rows):
            if (row["tenant_id"], row["aggregate_id"]) in held:
                continue
            headers = {"Nats-Msg-Id": row["id"]}
            if row["traceparent"]:
                headers["traceparent"] = row["traceparent"]
            size = len(row["envelope"]) + _header_bytes(headers)
            subject = namespaced(row["subject"], namespace)
            try:
                if size > self.nc.max_payload:  # checked here: nats-py would leave its ack future dangling
                    raise _TooLarge(f"{size} bytes, over the server's max_payload of {self.nc.max_payload}")
                if one_by_one:
                    ack = await self.js.publish(
                        subject, row["envelope"], headers=headers, timeout=self.settings.relay_ack_timeout
                    )
                    acked.append((row, ack))
                else:
                    sent.append((row, await self.js.publish_async(subject, row["envelope"], headers=headers)))
            except (nats.errors.Error, OSError) as exc:
                if not refused_for_good(exc):
                    cause, unsent = exc, i
                    break
                self._refused(row, exc, held)
        if sent:
            _, not_done = await asyncio.wait([f for _, f in sent], timeout=self.settings.relay_ack_timeout)
            for future in not_done:
                future.cancel()
        left: list[asyncpg.Record] = []
        for row, future in sent:
            if future.cancelled():
                cause = cause or TimeoutError("no ack from JetStream")
                left.append(row)
            elif future.exception() is not None:
                exc = future.exception()
                if refused_for_good(exc):
                    self._refused(row, exc, held)
                    continue
                cause = cause or exc
                left.append(row)
            else:
                acked.append((row, future.result()))
        for row, ack in acked:
            self._unmarked.append(row["seq"])
            if ack.duplicate:
                self.duplicates += 1
            else:
                self.published += 1
        left.extend(r for r in rows[unsent:] if (r["tenant_id"], r["aggregate_id"]) not in held)
        return left, cause

    def _refused(self, row: asyncpg.Record, exc: BaseException, held: set[tuple[str, str]]) -> None:
        """NATS refused `row` for good: park it (at `_lead`'s next step) and hold back its aggregate."""
        error = describe(exc)
        self._to_park.append((row["seq"], error))
        if row["aggregate_id"]:
            held.add((row["tenant_id"], row["aggregate_id"]))
        self.parked += 1
        PARKED.add(1, {"subject": row["subject"]})
        log.error(
            "relay parked outbox event %s (seq %s, %s, aggregate %s): NATS refused it: %s; later events of "
            "its aggregate wait until an operator retries or discards it (python -m crm_kit.events.parked)",
            row["id"],
            row["seq"],
            row["subject"],
            row["aggregate_id"] or "-",
            error,
            extra={"alert": "event_parked"},
        )

    async def _park(self, conn: asyncpg.Connection) -> None:
        parking, self._to_park = self._to_park, []
        await conn.execute(PARK, [seq for seq, _ in parking], [error for _, error in parking])

    async def _prune(self, conn: asyncpg.Connection) -> None:
        for statement, retention in (
            (PRUNE_OUTBOX, self.settings.outbox_retention),
            (PRUNE_INBOX, self.settings.inbox_retention),
            (PRUNE_IDEMPOTENT_REQUESTS, IDEMPOTENT_REQUEST_RETENTION),
        ):
            try:
                while True:
                    status = await conn.execute(statement, retention, PRUNE_BATCH)
                    if int(status.split()[-1]) < PRUNE_BATCH or self.leader.stopping.is_set():
                        break
            except asyncpg.UndefinedTableError:
                log.warning("cannot prune: %s", statement.split()[2])

    # -- waiting ---------------------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """tenacity's sleep between publish attempts: cut short by stop() or a NATS reconnect."""
        if not await self.leader.pause(seconds, self._retry):
            raise _Stopped

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("relay publish attempt %s failed, retrying: %s", state.attempt_number, exc)
